package broker

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-dev/shoal/internal/link"
	"github.com/shoal-dev/shoal/internal/zsock"
	"github.com/shoal-dev/shoal/wire"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	Endpoints []string      // the clients endpoint of every broker
	Heartbeat time.Duration // as the brokers' heartbeat
	Liveness  int
	Transport zsock.Options
	Logger    *slog.Logger
}

// ErrUnavailable is returned by Do when no broker link is up.
var ErrUnavailable = errors.New("broker: no broker reachable")

// Client sends requests to services through every configured broker and
// waits for their replies. It is safe for concurrent use; the frontend uses
// one per process, and so does a worker for its calls to other services.
//
// Each broker gets its own DEALER link (zmq4's DEALER would copy a message
// to every peer it is connected to); requests are spread round-robin over
// the links that are up.
type Client struct {
	links  []*link.Link
	next   atomic.Uint64
	ids    atomic.Uint64
	shards [64]shard
	late   atomic.Uint64
}

type shard struct {
	mu sync.Mutex
	m  map[uint64]*call
}

// call is one outstanding request. ch gets the reply frame, or nil when the
// link it travelled on was lost.
type call struct {
	ch   chan []byte
	link *link.Link
}

var calls = sync.Pool{New: func() any { return &call{ch: make(chan []byte, 1)} }}

// NewClient starts a link to every endpoint. Links connect in the
// background; Ready reports when at least one is up.
func NewClient(o ClientOptions) (*Client, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("broker: client needs at least one broker endpoint")
	}
	c := &Client{}
	// Request ids must be unique across every client of a broker: a random
	// 64-bit base per client plus a counter makes collisions negligible, and
	// the broker refuses the rare one it sees.
	var seed [8]byte
	_, _ = rand.Read(seed[:])
	c.ids.Store(binary.LittleEndian.Uint64(seed[:]))
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]*call)
	}
	for _, ep := range o.Endpoints {
		c.links = append(c.links, link.Start(link.Options{
			Endpoint:  ep,
			Heartbeat: o.Heartbeat,
			Liveness:  o.Liveness,
			Transport: o.Transport,
			Logger:    o.Logger,
			Batch:     wire.CmdRequest,
			Handle:    c.handle,
			OnDown:    c.linkDown,
		}))
	}
	return c, nil
}

// Ready reports whether at least one broker link is up.
func (c *Client) Ready() bool {
	for _, l := range c.links {
		if l.Up() {
			return true
		}
	}
	return false
}

// LateReplies counts replies that arrived after their caller stopped
// waiting.
func (c *Client) LateReplies() uint64 { return c.late.Load() }

// Close stops every link. Outstanding calls end with their context.
func (c *Client) Close() {
	for _, l := range c.links {
		l.Close()
	}
}

// pick returns the next live link in turn, other than tried when it can.
func (c *Client) pick(tried *link.Link) *link.Link {
	n := uint64(len(c.links))
	start := c.next.Add(1)
	var fallback *link.Link
	for i := range n {
		if l := c.links[(start+i)%n]; l.Up() {
			if l != tried {
				return l
			}
			fallback = l
		}
	}
	return fallback
}

// Do sends req and waits for its reply or for ctx to end. It sets req.ID,
// and req.Deadline from ctx when the request has none. Every outcome the
// system produced comes back as a Reply, errors included (see wire.Code);
// err is non-nil only when no reply can come: ctx ended (ctx.Err()) or no
// broker is reachable (ErrUnavailable). A request whose broker connection
// is lost while it is out is sent again through another broker when it
// has attempts left (req.MaxAttempts > 1: the route is idempotent) and ctx
// allows; otherwise it ends with CodeUnavailable. A broker that answers
// that it has no worker for the service (no_service, no_worker: nothing
// ran) is not the last word while another broker is up: a broker that just
// started, or whose workers are reconnecting, does not turn requests away
// that the others can serve. Do does not keep req.
func (c *Client) Do(ctx context.Context, req *wire.Request) (*wire.Reply, error) {
	if req.Deadline == 0 {
		if dl, ok := ctx.Deadline(); ok {
			req.Deadline = dl.UnixMilli()
		}
	}
	if req.Attempt == 0 {
		req.Attempt = 1
	}
	var tried *link.Link
	asked := 0
	for {
		b, l, err := c.once(ctx, req, tried)
		if err != nil {
			return nil, err
		}
		if b != nil {
			rep := new(wire.Reply)
			if err := rep.UnmarshalMsgpack(b); err != nil {
				return &wire.Reply{ID: req.ID, Code: wire.CodeBadRequest, Error: err.Error()}, nil
			}
			if asked++; (rep.Code == wire.CodeNoService || rep.Code == wire.CodeNoWorker) &&
				asked < len(c.links) && ctx.Err() == nil {
				if next := c.pick(l); next != nil && next != l {
					tried = l
					continue // another broker may have the workers
				}
			}
			return rep, nil
		}
		// The link it travelled on was lost.
		if req.Attempt >= max(req.MaxAttempts, 1) || ctx.Err() != nil {
			return &wire.Reply{ID: req.ID, Code: wire.CodeUnavailable, Error: "connection to broker lost"}, nil
		}
		req.Attempt++
	}
}

// once sends req through one link and waits. It returns the reply frame,
// or nil when the link was lost with the request on it.
func (c *Client) once(ctx context.Context, req *wire.Request, tried *link.Link) ([]byte, *link.Link, error) {
	l := c.pick(tried)
	if l == nil {
		return nil, nil, ErrUnavailable
	}
	req.ID = c.ids.Add(1)
	env := req.AppendMsgpack(make([]byte, 0, 128+len(req.Body)))

	cl := calls.Get().(*call)
	cl.link = l
	sh := &c.shards[req.ID%uint64(len(c.shards))]
	sh.mu.Lock()
	sh.m[req.ID] = cl
	sh.mu.Unlock()

	if !l.Send(env) {
		if c.take(req.ID) != nil {
			c.recycle(cl)
			return nil, l, ErrUnavailable
		}
		// linkDown took it first and is delivering nil.
	}
	var b []byte
	select {
	case b = <-cl.ch:
	case <-ctx.Done():
		if c.take(req.ID) != nil {
			c.recycle(cl)
			return nil, l, ctx.Err()
		}
		b = <-cl.ch // a deliverer took it: its send is on the way
	}
	c.recycle(cl)
	return b, l, nil
}

func (c *Client) recycle(cl *call) {
	cl.link = nil
	calls.Put(cl)
}

func (c *Client) take(id uint64) *call {
	sh := &c.shards[id%uint64(len(c.shards))]
	sh.mu.Lock()
	cl := sh.m[id]
	if cl != nil {
		delete(sh.m, id)
	}
	sh.mu.Unlock()
	return cl
}

// handle delivers REPLY envelopes to their callers; it runs on the link's
// receive goroutine, so it only peeks the id and leaves decoding to Do.
func (c *Client) handle(_ *link.Link, m wire.Message) {
	if m.Cmd != wire.CmdReply {
		return
	}
	for _, env := range m.Body {
		id, err := wire.PeekReplyID(env)
		if err != nil {
			continue
		}
		if cl := c.take(id); cl != nil {
			cl.ch <- env
		} else {
			c.late.Add(1)
		}
	}
}

// linkDown ends every call that travelled on l: the broker that held them
// is gone, and with it any reply.
func (c *Client) linkDown(l *link.Link) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for id, cl := range sh.m {
			if cl.link == l {
				delete(sh.m, id)
				cl.ch <- nil
			}
		}
		sh.mu.Unlock()
	}
}
