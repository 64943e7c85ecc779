// Package wire is Shoal's wire protocol: the frames of every ZeroMQ message
// exchanged between clients, brokers and workers, and the msgpack envelopes
// that carry requests and replies. It is the only package that knows the
// byte layout; everything else builds and reads messages through it.
//
// A message, as a DEALER sends it (a ROUTER sees the peer identity first):
//
//	frame 0  "SHL1"          protocol and version (Version)
//	frame 1  one byte        command: READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT
//	frame 2… command body    READY: one msgpack Ready map
//	                         REQUEST: one msgpack Request envelope per frame
//	                         REPLY: one msgpack Reply envelope per frame
//	                         DISCONNECT: optional UTF-8 reason
//
// Several envelopes travel in one message when they queued up together: on a
// busy link this is what keeps ZeroMQ's per-message cost off each request.
//
// Building and reading a request:
//
//	req := wire.Request{ID: 7, Service: "echo", Method: "GET /echo", Body: b}
//	buf = req.AppendMsgpack(buf[:0])
//	frames := wire.Frames(wire.CmdRequest, buf)
//	…
//	msg, err := wire.Parse(frames)      // validates version and command
//	var in wire.Request
//	err = in.UnmarshalMsgpack(msg.Body[0])
//
// The broker does not decode whole envelopes: PeekRequest and PeekReplyID
// read the few routing fields in place without allocating.
//
// docs/protocol.md is the normative description; keep the two in step.
package wire
