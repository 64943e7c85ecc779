package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// bareServer is the baseline: a fasthttp server doing nothing but answer
// with a canned reply the size of the pipeline's.
type bareServer struct {
	srv  *fasthttp.Server
	ln   net.Listener
	url  string
	addr string

	contentType string
	headers     [][2]string            // copied from the pipeline's reply
	body        atomic.Pointer[[]byte] // adjusted until the sizes match
}

// startBare starts the baseline server on a free 127.0.0.1 port, replying
// like ref (a reply of the pipeline): same Server name, Content-Type, other
// headers and body. Date and Content-Length fasthttp adds itself.
func startBare(ref *fasthttp.Response) (*bareServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &bareServer{ln: ln, addr: ln.Addr().String()}
	b.url = "http://" + b.addr + "/echo"
	b.contentType = string(ref.Header.ContentType())
	for k, v := range ref.Header.All() {
		switch strings.ToLower(string(k)) {
		case "server", "date", "content-type", "content-length", "connection", "transfer-encoding":
			continue
		}
		b.headers = append(b.headers, [2]string{string(k), string(v)})
	}
	body := bytes.Clone(ref.Body())
	b.body.Store(&body)
	b.srv = &fasthttp.Server{
		Handler:                      b.serve,
		Name:                         string(ref.Header.Server()),
		ReadTimeout:                  10 * time.Second,
		WriteTimeout:                 10 * time.Second,
		IdleTimeout:                  60 * time.Second,
		NoDefaultContentType:         true,
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
	}
	go func() { _ = b.srv.Serve(ln) }()
	return b, nil
}

func (b *bareServer) serve(ctx *fasthttp.RequestCtx) {
	if b.contentType != "" {
		ctx.SetContentType(b.contentType)
	}
	for _, h := range b.headers {
		ctx.Response.Header.Set(h[0], h[1])
	}
	ctx.SetBody(*b.body.Load())
}

// matchSize pads (or trims) the bare body until the bare reply to the same
// request has exactly want bytes on the wire. It returns the final size.
func (b *bareServer) matchSize(path string, reqBody []byte, want int) (int, error) {
	for range 3 {
		got, _, err := rawExchange(b.addr, path, reqBody)
		if err != nil {
			return 0, err
		}
		if got == want {
			return got, nil
		}
		body := bytes.Clone(*b.body.Load())
		if d := want - got; d > 0 {
			// Spaces before the trailing newline keep a JSON body valid.
			nl := len(body) > 0 && body[len(body)-1] == '\n'
			if nl {
				body = body[:len(body)-1]
			}
			body = append(body, bytes.Repeat([]byte(" "), d)...)
			if nl {
				body = append(body, '\n')
			}
		} else {
			body = body[:max(0, len(body)+d)]
		}
		b.body.Store(&body)
	}
	got, _, err := rawExchange(b.addr, path, reqBody)
	return got, err
}

func (b *bareServer) close() {
	if b != nil {
		_ = b.srv.Shutdown()
	}
}

// rawExchange sends one POST, as wrk sends it, on a new connection and
// returns the reply's size in bytes on the wire and the parsed reply.
func rawExchange(addr, path string, body []byte) (int, *fasthttp.Response, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		path, addr, len(body), body)
	if _, err := io.WriteString(conn, req); err != nil {
		return 0, nil, err
	}
	cr := &countingReader{r: conn}
	resp := &fasthttp.Response{}
	if err := resp.Read(bufio.NewReader(cr)); err != nil {
		return 0, nil, fmt.Errorf("reading the reply from %s: %w", addr, err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return 0, nil, fmt.Errorf("POST %s on %s: status %d: %s", path, addr, resp.StatusCode(), resp.Body())
	}
	return cr.n, resp, nil
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
