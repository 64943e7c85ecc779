package frontend

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/shoal-dev/shoal/wire"
	"github.com/valyala/fasthttp"
)

// Error codes of the frontend's own JSON errors, next to the wire codes a
// reply can carry (wire.Code).
const (
	codeBadReply = "bad_reply" // a worker answered with a status HTTP cannot carry
)

// respond turns the Doer's answer into the HTTP response. It is the one
// place where outcomes become statuses:
//
//	Doer error: context deadline          504 deadline
//	Doer error: anything else             503 unavailable
//	Code "":    the reply's Status (0 = 200), its headers (minus hop-by-hop) and body
//	Code handler: the reply's Status if 4xx/5xx, else 500; its headers
//	other codes: Code.HTTPStatus(); overloaded adds Retry-After: 1
//
// Error responses carry {"error": code, "message": …, "request_id": rid}.
// Every response carries X-Request-Id.
func (s *Server) respond(ctx *fasthttp.RequestCtx, x *exchange, rid string, rep *wire.Reply, err error) outcome {
	var (
		code   wire.Code
		msg    string // for the client
		detail string // for the log
		status int
	)
	switch {
	case err != nil:
		if errors.Is(err, context.DeadlineExceeded) {
			code, msg = wire.CodeDeadline, "no reply before the deadline"
		} else {
			code, msg = wire.CodeUnavailable, "service unavailable"
		}
		detail = err.Error()
		status = code.HTTPStatus()
	case rep == nil:
		code, msg = wire.CodeUnavailable, "service unavailable"
		detail = "Doer returned neither a reply nor an error"
		status = code.HTTPStatus()
	case rep.Code == wire.CodeOK:
		status = rep.Status
		if status == 0 {
			status = fasthttp.StatusOK
		}
		if status < 200 || status > 599 {
			return s.respondError(ctx, x, fasthttp.StatusBadGateway, codeBadReply,
				"the service answered with an invalid status", rid,
				"worker status "+strconv.Itoa(rep.Status))
		}
		copyHeaders(ctx, rep.Headers)
		ctx.SetStatusCode(status)
		ctx.Response.Header.Set(HeaderRequestID, rid)
		ctx.Response.SetBodyRaw(rep.Body) // the reply is ours (see Doer)
		return outcome{status: status}
	default:
		code, msg = rep.Code, rep.Error
		detail = rep.Error
		status = code.HTTPStatus()
		if code == wire.CodeHandler {
			if rep.Status >= 400 && rep.Status <= 599 {
				status = rep.Status
			}
			copyHeaders(ctx, rep.Headers)
		}
	}
	if code == wire.CodeOverloaded {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	if msg == "" {
		msg = fasthttp.StatusMessage(status)
	}
	return s.respondError(ctx, x, status, string(code), msg, rid, detail)
}

func (s *Server) respondError(ctx *fasthttp.RequestCtx, x *exchange, status int, code, msg, rid, detail string) outcome {
	x.buf = writeErrorBuf(ctx, x.buf[:0], status, code, msg, rid)
	return outcome{status: status, code: code, msg: detail}
}

// copyHeaders adds a reply's headers to the response, leaving out
// hop-by-hop headers, X-Request-Id (the frontend sets it) and names that
// are not valid tokens. fasthttp strips CR and LF from values.
func copyHeaders(ctx *fasthttp.RequestCtx, hdrs []wire.KV) {
	for _, kv := range hdrs {
		if !validToken(kv.Key) || isHopByHop(kv.Key) || strings.EqualFold(kv.Key, HeaderRequestID) {
			continue
		}
		ctx.Response.Header.Add(kv.Key, kv.Value)
	}
}

// writeError writes a JSON error response. Off the hot path.
func (s *Server) writeError(ctx *fasthttp.RequestCtx, status int, code, msg, rid string) {
	if msg == "" {
		msg = fasthttp.StatusMessage(status)
	}
	writeErrorBuf(ctx, make([]byte, 0, 128), status, code, msg, rid)
}

// writeErrorBuf writes {"error":code,"message":msg,"request_id":rid}
// using buf as scratch, and returns buf for reuse.
func writeErrorBuf(ctx *fasthttp.RequestCtx, buf []byte, status int, code, msg, rid string) []byte {
	buf = append(buf, `{"error":`...)
	buf = appendJSONString(buf, code)
	buf = append(buf, `,"message":`...)
	buf = appendJSONString(buf, msg)
	if rid != "" {
		buf = append(buf, `,"request_id":`...)
		buf = appendJSONString(buf, rid)
		ctx.Response.Header.Set(HeaderRequestID, rid)
	}
	buf = append(buf, "}\n"...)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(buf) // copies
	return buf
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD; control characters and <, >, & are escaped.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20 || c == '<' || c == '>' || c == '&' || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+n]...)
		}
		i += n
	}
	return append(b, '"')
}
