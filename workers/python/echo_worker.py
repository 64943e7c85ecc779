#!/usr/bin/python3
"""Shoal echo worker in Python, written from docs/protocol.md alone.

It is the reference for worker authors in languages other than Go: every
rule it follows is a numbered section of docs/protocol.md ("spec §N" in the
comments). It needs only Debian's python3-zmq and python3-msgpack:

    apt-get install python3-zmq python3-msgpack
    ./echo_worker.py --broker tcp://127.0.0.1:5556 --service echo

What it does:

  * one DEALER socket per broker (never one DEALER connected to two brokers),
    READY on each with the services, credit and heartbeat interval;
  * serves REQUEST messages, which may carry several envelopes, and answers
    each envelope with a Reply envelope carrying the same id; all replies to
    what arrived together go back as one REPLY message;
  * sends HEARTBEAT every interval; a broker silent for `liveness` intervals
    is presumed dead: close the socket (linger 0), open a new one (which
    gives a fresh identity) and READY again;
  * on DISCONNECT from a broker ("I do not know you") sends READY again;
  * on SIGTERM or SIGINT drains: DISCONNECT to every broker, serve what is
    still arriving for a grace period, flush, exit 0. A second signal exits
    at once with status 1.

The handler echoes the request as JSON:

    {"method": verb, "path": path, "query": qry, "body": body as UTF-8 text,
     "service": svc, "worker": "python"}
"""

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import time

import msgpack
import zmq

# ---- protocol constants (spec §3, §4) ----

VERSION = b"SHL1"  # frame 0 of every message

# Frame 1: one command byte.
CMD_READY = b"\x01"  # worker -> broker
CMD_REQUEST = b"\x02"  # broker -> worker
CMD_REPLY = b"\x03"  # worker -> broker
CMD_HEARTBEAT = b"\x04"  # both ways
CMD_DISCONNECT = b"\x05"  # both ways

MAX_BATCH = 1024  # most envelopes in one REQUEST or REPLY message
MAX_HOPS = 64  # most trace hops in an envelope (spec §9)
DEFAULT_MAX_FRAME = 64 << 20  # the broker's default transport.max_frame

# Service names (spec §6).
SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")

# How long the final close waits to flush replies and DISCONNECT, in ms.
EXIT_LINGER_MS = 1000

log = logging.getLogger("echo_worker")


def now_us():
    """Wall clock in unix microseconds, for trace hops."""
    return time.time_ns() // 1000


def now_ms():
    """Wall clock in unix milliseconds, for deadlines."""
    return time.time_ns() // 1_000_000


class Skip(Exception):
    """An envelope that cannot be answered: no usable id (spec §15 step 3)."""


class BadRequest(Exception):
    """An envelope with a usable id but invalid content: answer bad_request."""


# ---- envelopes (spec §5, §7, §8, §9) ----


def _str_field(env, key):
    """Return optional string field key ("" when absent)."""
    v = env.get(key, "")
    if not isinstance(v, str):
        raise BadRequest("field %r: string expected, got %s" % (key, type(v).__name__))
    return v


def _int_field(env, key):
    """Return optional integer field key (0 when absent)."""
    v = env.get(key, 0)
    # bool is a subclass of int in Python: a msgpack true is not a number.
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest("field %r: integer expected, got %s" % (key, type(v).__name__))
    return v


def _map_field(env, key):
    """Return optional map of string to string field key ({} when absent)."""
    v = env.get(key, {})
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    ):
        raise BadRequest("field %r: map of string to string expected" % key)
    return v


def _recover_id(frame):
    """Find the id of an envelope that did not decode as a whole.

    A frame whose strings are not valid UTF-8 fails unpackb(raw=False), yet
    its id may be fine; we then still owe the broker a reply (bad_request),
    or the request would hold one of our credits until we die.
    """
    try:
        env = msgpack.unpackb(frame, raw=True)
    except Exception:
        return None
    if not isinstance(env, dict):
        return None
    v = env.get(b"id")
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64:
        return v
    return None


def decode_request(frame):
    """Decode and check one REQUEST body frame; return (id, envelope dict).

    Raises Skip when there is no id to answer, and BadRequest (with the id
    attached as .id) when there is one but the rest is invalid.
    """
    try:
        env = msgpack.unpackb(frame, raw=False)
    except Exception as e:
        rid = _recover_id(frame)
        if rid is None:
            raise Skip("undecodable envelope (%s: %s)" % (type(e).__name__, e))
        err = BadRequest("undecodable envelope: %s" % e)
        err.id = rid
        raise err
    if not isinstance(env, dict):
        raise Skip("envelope is a %s, not a map" % type(env).__name__)
    rid = env.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 1 << 64:
        raise Skip("envelope has no valid id")
    try:
        # Required: id (checked above) and svc. All other keys are optional,
        # and keys we do not know are ignored (spec §5).
        if not isinstance(env.get("svc"), str):
            raise BadRequest("field 'svc' missing or not a string")
        for k in ("rid", "mth", "verb", "path", "qry"):
            _str_field(env, k)
        for k in ("dl", "att", "max"):
            _int_field(env, k)
        for k in ("hdr", "prm"):
            _map_field(env, k)
        body = env.get("body", b"")
        if not isinstance(body, bytes):
            raise BadRequest("field 'body': bin expected")
        tr = env.get("tr", [])
        if not isinstance(tr, list) or not all(isinstance(h, dict) for h in tr):
            raise BadRequest("field 'tr': array of maps expected")
    except BadRequest as err:
        err.id = rid
        raise
    return rid, env


def encode_reply(rid, trace, hop, status=200, code="", error="", headers=None, body=b""):
    """Encode one Reply envelope (spec §8). Empty optional fields are left out."""
    rep = {"id": rid, "st": status}
    if code:
        rep["code"] = code
    if error:
        rep["err"] = error
    if headers:
        rep["hdr"] = headers
    if body:
        rep["body"] = bytes(body)  # bytes -> msgpack bin (use_bin_type=True)
    # The reply carries the request's hops plus our own, within the limit.
    hops = list(trace)
    if len(hops) < MAX_HOPS:
        hops.append(hop)
    rep["tr"] = hops
    return msgpack.packb(rep, use_bin_type=True)


# ---- the handler: the only application code in this file ----


def echo(env):
    """Return (status, headers, body) for a decoded, checked request."""
    out = json.dumps({
        "method": env.get("verb", ""),
        "path": env.get("path", ""),
        "query": env.get("qry", ""),
        "body": env.get("body", b"").decode("utf-8", errors="replace"),
        "service": env["svc"],
        "worker": "python",
    })
    return 200, {"Content-Type": "application/json"}, out.encode("utf-8")


# ---- the worker ----


class BrokerLink:
    """One DEALER socket connected to one broker's workers endpoint (spec §2).

    A DEALER connected to several endpoints would spread (or, in Go's zmq4,
    broadcast) our messages over all of them, so each broker gets its own.
    """

    def __init__(self, worker, endpoint):
        self.w = worker
        self.endpoint = endpoint
        self.sock = None
        self.last_heard = 0.0  # monotonic time of the last message from the broker
        self.next_heartbeat = 0.0  # monotonic time of our next HEARTBEAT

    def open(self):
        """Create a fresh socket, connect it and send READY (spec §15 steps 1-2)."""
        s = self.w.ctx.socket(zmq.DEALER)
        # Never block on close with messages queued for a dead broker.
        s.setsockopt(zmq.LINGER, 0)
        # Drop the connection on a frame larger than the broker would accept
        # anyway, before allocating it.
        s.setsockopt(zmq.MAXMSGSIZE, self.w.max_frame)
        # Deliberately NOT set: ZMQ_HEARTBEAT_IVL/TTL/TIMEOUT (ZMTP 3.1 PING,
        # which Go's zmq4 broker does not understand), and ZMQ_ROUTING_ID
        # (the broker's ROUTER gives every connection a fresh identity).
        s.connect(self.endpoint)
        self.sock = s
        now = time.monotonic()
        self.last_heard = now
        self.next_heartbeat = now + self.w.heartbeat
        self.send(CMD_READY, self.w.ready_body)
        log.info("%s: connected, READY sent", self.endpoint)

    def close(self, linger_ms=0):
        if self.sock is not None:
            self.sock.close(linger=linger_ms)
            self.sock = None

    def send(self, cmd, *body):
        """Send [SHL1, cmd, body...]. Never blocks: if the socket's queue is
        full the broker has not read from us for a long time, and the
        heartbeat logic will replace the socket soon."""
        try:
            self.sock.send_multipart([VERSION, cmd] + list(body), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            log.warning("%s: send queue full, message dropped", self.endpoint)
            return False


class Worker:
    def __init__(self, args):
        self.services = args.service
        self.heartbeat = args.heartbeat  # seconds
        self.liveness = args.liveness
        self.max_frame = args.max_frame
        self.proc = "%s/%d" % (socket.gethostname(), os.getpid())
        # READY body (spec §6): the same for every broker and every re-READY.
        self.ready_body = msgpack.packb(
            {
                "svc": self.services,
                "credit": args.credit,
                "hb": int(round(self.heartbeat * 1000)),
                "name": "%s:%d" % (self.services[0], os.getpid()),
                "proc": self.proc,
            },
            use_bin_type=True,
        )
        self.ctx = zmq.Context()
        self.links = [BrokerLink(self, ep) for ep in args.broker]
        self.poller = zmq.Poller()
        self.signals = 0
        self.draining = False
        self.drain_until = 0.0
        self.served = 0

    # -- signals: a self-pipe lets a signal wake zmq.Poller at once --

    def _on_signal(self, signum, frame):
        self.signals += 1

    def _install_signals(self):
        self.sig_r, sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(sig_w, False)
        signal.set_wakeup_fd(sig_w)  # the C handler writes a byte here
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.poller.register(self.sig_r, zmq.POLLIN)

    # -- requests --

    def handle(self, frame):
        """Answer one REQUEST body frame; return the Reply frame or None."""
        start = now_us()
        t0 = time.perf_counter_ns()
        try:
            rid, env = decode_request(frame)
        except Skip as e:
            # No id: nobody can be answered. Log and go on (spec §15 step 3).
            log.warning("skipping malformed envelope: %s", e)
            return None
        except BadRequest as e:
            log.warning("bad request id=%d: %s", e.id, e)
            hop = {"svc": self.services[0], "proc": self.proc, "start": start, "dur": 0}
            return encode_reply(e.id, [], hop, status=400, code="bad_request", error=str(e))

        svc = env["svc"]
        trace = env.get("tr", [])

        def hop():
            return {
                "svc": svc,
                "proc": self.proc,
                "start": start,
                "dur": (time.perf_counter_ns() - t0) // 1000,
                "tags": {"lang": "python"},
            }

        if svc not in self.services:
            return encode_reply(rid, trace, hop(), status=400, code="bad_request",
                                error="service %r is not served by this worker" % svc)
        # Nobody waits for an answer after the deadline (spec §7 dl): do not
        # do the work, but still answer so that the broker gets its credit back.
        dl = env.get("dl", 0)
        if dl and now_ms() > dl:
            return encode_reply(rid, trace, hop(), status=504, code="deadline",
                                error="deadline passed before the worker started")

        try:
            status, headers, body = echo(env)
        except Exception as e:
            # A crashing handler must not take the worker down (spec §10 panic).
            log.exception("handler failed for id=%d", rid)
            return encode_reply(rid, trace, hop(), status=500, code="panic",
                                error="%s: %s" % (type(e).__name__, e))
        self.served += 1
        return encode_reply(rid, trace, hop(), status=status, headers=headers, body=body)

    # -- messages from a broker --

    def on_message(self, link, frames):
        """Handle one message; return the Reply frames it produced."""
        # ANY message proves the broker alive (spec §11).
        link.last_heard = time.monotonic()
        if len(frames) < 2 or frames[0] != VERSION or len(frames[1]) != 1:
            log.warning("%s: dropping message that is not SHL1 (%d frames)", link.endpoint, len(frames))
            return []
        cmd, body = frames[1], frames[2:]
        if cmd == CMD_REQUEST:
            if not body or len(body) > MAX_BATCH:
                log.warning("%s: dropping REQUEST with %d envelopes", link.endpoint, len(body))
                return []
            replies = []
            for frame in body:
                rep = self.handle(frame)
                if rep is not None:
                    replies.append(rep)
            return replies
        if cmd == CMD_HEARTBEAT:
            return []  # liveness already noted above
        if cmd == CMD_DISCONNECT:
            # "I do not know you": the broker restarted or declared us dead.
            # Register again, unless we are leaving anyway (spec §4.5).
            if not self.draining:
                # (If this repeats right after every READY, the broker is
                # rejecting our READY: check service names and credit.)
                log.info("%s: DISCONNECT from broker, sending READY again", link.endpoint)
                link.send(CMD_READY, self.ready_body)
            return []
        log.warning("%s: dropping unexpected command 0x%02x", link.endpoint, cmd[0])
        return []

    def read(self, link):
        """Read what is queued on link (bounded), answer it in REPLY batches."""
        replies = []
        for _ in range(64):
            try:
                frames = link.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            replies.extend(self.on_message(link, frames))
        # Replies may go in any order and in any grouping (spec §4.3).
        for i in range(0, len(replies), MAX_BATCH):
            link.send(CMD_REPLY, *replies[i:i + MAX_BATCH])

    # -- timers --

    def tick(self, now):
        interval = self.heartbeat
        for link in self.links:
            if link.sock is None:
                continue
            if now - link.last_heard > self.liveness * interval:
                if self.draining:
                    # Leaving anyway: nothing to re-register with.
                    log.warning("%s: broker silent while draining, closing", link.endpoint)
                    self.poller.unregister(link.sock)
                    link.close()
                    continue
                # The broker is presumed dead (spec §11, §15 step 5): a fresh
                # socket, so a fresh identity, then READY again.
                log.warning("%s: broker silent for %.1fs, reconnecting",
                            link.endpoint, now - link.last_heard)
                self.poller.unregister(link.sock)
                link.close(linger_ms=0)
                link.open()
                self.poller.register(link.sock, zmq.POLLIN)
                continue
            if now >= link.next_heartbeat:
                link.send(CMD_HEARTBEAT)
                link.next_heartbeat = now + interval

    def next_timeout_ms(self, now):
        when = [now + self.heartbeat]
        for link in self.links:
            if link.sock is not None:
                when.append(link.next_heartbeat)
                when.append(link.last_heard + self.liveness * self.heartbeat)
        if self.draining:
            when.append(self.drain_until)
        return max(0, int((min(when) - now) * 1000) + 1)

    # -- drain and exit --

    def start_drain(self):
        """SIGTERM (spec §15 step 6): tell every broker to send nothing more."""
        self.draining = True
        # Requests the broker dispatched before it read our DISCONNECT are
        # still on their way: keep serving them for one heartbeat interval.
        self.drain_until = time.monotonic() + self.heartbeat
        for link in self.links:
            if link.sock is not None:
                link.send(CMD_DISCONNECT, b"draining")
        log.info("draining: DISCONNECT sent, serving stragglers for %.1fs", self.heartbeat)

    def shutdown(self, linger_ms):
        for link in self.links:
            link.close(linger_ms=linger_ms)
        self.ctx.term()

    def run(self):
        self._install_signals()
        for link in self.links:
            link.open()
            self.poller.register(link.sock, zmq.POLLIN)
        while True:
            events = dict(self.poller.poll(self.next_timeout_ms(time.monotonic())))
            if self.sig_r in events:
                try:
                    os.read(self.sig_r, 512)
                except BlockingIOError:
                    pass
            if self.signals >= 2:
                log.warning("second signal: exiting without draining")
                self.shutdown(0)
                return 1
            if self.signals == 1 and not self.draining:
                self.start_drain()
            for link in self.links:
                if link.sock is not None and events.get(link.sock, 0) & zmq.POLLIN:
                    self.read(link)
            now = time.monotonic()
            self.tick(now)
            # This worker answers every request before polling again, so
            # nothing is in flight here: once the grace period is over, go.
            if self.draining and now >= self.drain_until:
                log.info("drained after %d requests served, exiting", self.served)
                # Give queued replies and DISCONNECT a moment to leave.
                self.shutdown(EXIT_LINGER_MS)
                return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description="Shoal echo worker (Python).")
    p.add_argument("--broker", action="append", metavar="ENDPOINT",
                   help="broker workers endpoint, e.g. tcp://127.0.0.1:5556 (repeatable)")
    p.add_argument("--service", action="append", metavar="NAME",
                   help='service to serve (repeatable; default "pyecho")')
    p.add_argument("--credit", type=int, default=16,
                   help="requests a broker may send before replies come back (default 16)")
    p.add_argument("--heartbeat", type=float, default=1.0,
                   help="heartbeat interval in seconds (default 1.0)")
    p.add_argument("--liveness", type=int, default=3,
                   help="silent intervals before a broker is presumed dead (default 3)")
    p.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME,
                   help="largest inbound frame in bytes (default 64 MiB, the broker's default)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    a = p.parse_args(argv)
    a.broker = a.broker or ["tcp://127.0.0.1:5556"]
    a.service = a.service or ["pyecho"]
    for s in a.service:
        if not SERVICE_RE.fullmatch(s):
            p.error("invalid service name %r: must match [a-z0-9][a-z0-9._-]{0,127}" % s)
    if not 1 <= a.credit <= 2**31 - 1:
        p.error("--credit must be between 1 and 2147483647")
    if not 0.001 <= a.heartbeat <= 3600:
        p.error("--heartbeat must be between 0.001 and 3600 seconds")
    if a.liveness < 1:
        p.error("--liveness must be at least 1")
    if len(set(a.broker)) != len(a.broker):
        p.error("each --broker may be given once")
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s echo_worker[%(process)d] %(levelname)s %(message)s",
    )
    return Worker(args).run()


if __name__ == "__main__":
    sys.exit(main())
