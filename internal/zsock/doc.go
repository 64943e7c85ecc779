// Package zsock is Shoal's only door to ZeroMQ: small ROUTER, DEALER, PUB,
// SUB, XPUB and XSUB sockets over TCP, built on github.com/go-zeromq/zmq4
// and hardened against the peers zmq4 cannot survive. No other package
// imports zmq4.
//
// # Use
//
// A broker binds a ROUTER; frames[0] of every message is the peer's
// identity, and replies go back by putting it first:
//
//	r, err := zsock.Listen(zsock.Router, "tcp://127.0.0.1:5555", zsock.Options{
//		OnDisconnect: func(id []byte) { gone <- string(id) }, // must not block
//	})
//	...
//	for {
//		msg, err := r.Recv() // [identity, frame, ...]
//		if errors.Is(err, zsock.ErrClosed) {
//			return
//		}
//		r.Send(append([][]byte{msg[0]}, reply...))
//	}
//
// A worker or frontend dials a DEALER, one attempt, and reconnects itself
// with a new socket when the old one reports ErrPeerGone (or its Done
// channel closes, or its own heartbeats say the broker is silent):
//
//	for {
//		d, err := zsock.Dial(zsock.Dealer, "tcp://127.0.0.1:5555", zsock.Options{})
//		if err != nil {
//			backoff(); continue
//		}
//		for {
//			msg, err := d.Recv() // ErrPeerGone once the connection is lost
//			if err != nil {
//				break
//			}
//			...
//		}
//		d.Close()
//	}
//
// Listen accepts "tcp://host:port" (port 0 picks one: see Addr). Send
// takes one multipart message and does not keep the frames. Send, Recv
// and Close are safe from several goroutines. Stats and WriteMetrics
// expose process-wide connection counters
// (shoal_zmtp_conns_dropped_total{reason="oversized_frame"} and friends).
//
// # Why this package exists
//
// zmq4 v0.17.0 is unmaintained, and any TCP client can crash or stall a
// process that listens with it (measured; see Shoal's ZMQ notes):
//
//   - It allocates whatever a frame header announces before reading it:
//     nine bytes announcing 2^40 bytes kill the process (fatal out of memory).
//   - A READY command whose property runs past the frame panics its reader,
//     an unknown Socket-Type panics its compatibility check, and random
//     bytes after a handshake panic it too.
//   - It runs every handshake inside its accept loop with no timeout: one
//     client that connects and says nothing blocks every later connection.
//   - It never closes a connection whose handshake failed: connect/close
//     loops exhaust file descriptors.
//   - ROUTER writes to all peers under one lock, two write(2) calls per
//     frame, with no deadline: one peer that stops reading stalls all sends.
//   - A DEALER's Recv returns the connection's error once, then blocks
//     forever; its Dial retries 10 times 250 ms on its own.
//
// zsock registers its own zmq4 transport ("shoaltcp"; users still write
// tcp://) whose connections fix this below zmq4:
//
//   - Inbound bytes are parsed before zmq4 sees them. The greeting must be
//     ZMTP 3.x with the NULL mechanism; frames may only set MORE, LONG and
//     COMMAND; a frame may announce at most Options.MaxFrame (64 MiB) and a
//     command at most 64 KiB, or the connection is dropped before anything
//     is allocated. Message bodies stream through unbuffered; commands are
//     held until complete and validated (READY properties within bounds, a
//     known and compatible Socket-Type). After the handshake PING is
//     answered with PONG, PONG is swallowed, and any other command (zmq4
//     would deliver it as a message) drops the connection.
//   - A listener writes its greeting itself and reads the client's greeting
//     and READY in a goroutine per connection under HandshakeTimeout; zmq4's
//     accept loop only ever gets connections whose handshake input is
//     already in memory. Connections zmq4 rejects anyway are closed.
//   - Dial makes one attempt bounded by HandshakeTimeout.
//   - Writes are gathered and flushed once per message (one write(2) for a
//     message up to Options.WriteBuffer). A flush waits at most a
//     millisecond for the kernel; the rest waits in a bounded per-peer
//     backlog that a writer goroutine drains under WriteTimeout. A peer
//     that does not drain its socket in time, or lets more than WriteQueue
//     bytes pile up, is disconnected; Send never waits for it.
//   - ROUTER (listening) and DEALER (dialing) sends bypass zmq4's writers,
//     which take a context per call, a goroutine per message and peer and,
//     on a ROUTER, one socket-wide lock across every write: Send frames
//     the message itself and writes it into the peer's connection under
//     that connection's own lock, routing by zsock's identity table. Sends
//     to different peers share no lock; a Send spawns no goroutine and
//     allocates nothing while the peer keeps up. zmq4 writes nothing to
//     those connections after its handshake (see conn in conn.go for the
//     invariant and the lock order). PUB, SUB, XPUB and XSUB send through
//     zmq4.
//   - Reads go through a ReadBuffer-sized buffer.
//   - A ROUTER refuses a second connection with the identity of a peer
//     still connected (zmq4 would send that peer's messages to both), and
//     reports disconnections through Options.OnDisconnect. A peer that
//     sends no identity gets one from zsock (a zero byte and 16 random
//     bytes, as frames[0] of its messages) instead of zmq4's UUID.
//   - A dialer's Recv returns ErrPeerGone after the last message that
//     arrived before the connection was lost, and Done closes.
//
// Every dropped connection is counted by reason (see Reasons).
//
// # What zsock does not fix
//
// Peer death without a TCP error (a frozen process, a cut cable) is only
// seen by application heartbeats. DEALER sends every message to every
// connected peer, so a DEALER dials exactly one endpoint (Dial does). A
// ROUTER's Send to an unknown identity is dropped silently. PUB queues
// without bound. XPUB swallows subscriptions (zmq4 #108). A peer may
// announce frames up to MaxFrame and send them slowly: size MaxFrame to the
// largest message the service needs. zmq4 still allocates every received
// frame.
package zsock
