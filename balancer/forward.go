package balancer

import (
	"bufio"
	"net"
	"net/netip"
	"strconv"

	"github.com/hostscale/hostscale/balancer/internal/h1"
)

// trustedSet holds the peers whose X-Forwarded-* headers are believed.
type trustedSet []netip.Prefix

func newTrustedSet(ps []netip.Prefix) trustedSet {
	out := make(trustedSet, len(ps))
	for i, p := range ps {
		out[i] = p.Masked()
	}
	return out
}

func (t trustedSet) contains(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func peerAddr(c net.Conn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// writeRequestHead writes the upstream request head for req: the request line,
// end-to-end header fields, framing, and X-Forwarded-For/-Proto/-Host. From a
// trusted peer the incoming X-Forwarded-For is extended and -Proto/-Host are
// kept; from any other peer all three are replaced. secure says the client
// came over TLS (X-Forwarded-Proto: https).
func writeRequestHead(w *bufio.Writer, req *h1.Request, peer string, trusted, secure bool, scratch []byte) {
	w.Write(req.Method)
	w.WriteByte(' ')
	w.Write(req.Target)
	w.WriteString(" HTTP/1.1\r\n")
	var xff, xfp, xfh bool
	for i := range req.Headers {
		h := &req.Headers[i]
		switch h.Kind {
		case h1.KindOther, h1.KindHost, h1.KindExpect:
			if h.Kind == h1.KindOther && req.ConnTokens && h1.ConnectionNames(req.Headers, h.Name) {
				continue
			}
		case h1.KindXForwardedProto:
			if !trusted {
				continue
			}
			xfp = true
		case h1.KindXForwardedHost:
			if !trusted {
				continue
			}
			xfh = true
		case h1.KindXForwardedFor:
			// Written below, merged into one field.
			xff = xff || trusted
			continue
		default:
			// Hop-by-hop, Connection, Upgrade and framing: rewritten below.
			continue
		}
		w.Write(h.Name)
		w.WriteString(": ")
		w.Write(h.Value)
		w.WriteString("\r\n")
	}
	if req.Chunked {
		w.WriteString("Transfer-Encoding: chunked\r\n")
	} else if req.ContentLength >= 0 {
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(scratch[:0], req.ContentLength, 10))
		w.WriteString("\r\n")
	}
	if req.Upgrade {
		w.WriteString("Connection: Upgrade\r\n")
		for i := range req.Headers {
			if h := &req.Headers[i]; h.Kind == h1.KindUpgrade {
				w.WriteString("Upgrade: ")
				w.Write(h.Value)
				w.WriteString("\r\n")
			}
		}
	}
	w.WriteString("X-Forwarded-For: ")
	if xff {
		for i := range req.Headers {
			if h := &req.Headers[i]; h.Kind == h1.KindXForwardedFor && len(h.Value) > 0 {
				w.Write(h.Value)
				w.WriteString(", ")
			}
		}
	}
	w.WriteString(peer)
	w.WriteString("\r\n")
	if !xfp {
		if secure {
			w.WriteString("X-Forwarded-Proto: https\r\n")
		} else {
			w.WriteString("X-Forwarded-Proto: http\r\n")
		}
	}
	if !xfh && len(req.Host) > 0 {
		w.WriteString("X-Forwarded-Host: ")
		w.Write(req.Host)
		w.WriteString("\r\n")
	}
	w.WriteString("\r\n")
}

// writeResponseHead writes resp's head to the client. chunked and length
// describe the framing the client will see; closing adds Connection: close.
func writeResponseHead(w *bufio.Writer, resp *h1.Response, clientMinor int, chunked bool, length int64, closing bool, scratch []byte) {
	w.WriteString("HTTP/1.1 ")
	w.Write(strconv.AppendInt(scratch[:0], int64(resp.Status), 10))
	w.WriteByte(' ')
	w.Write(resp.Reason)
	w.WriteString("\r\n")
	upgrade := resp.Status == 101
	for i := range resp.Headers {
		h := &resp.Headers[i]
		switch h.Kind {
		case h1.KindOther, h1.KindHost, h1.KindExpect, h1.KindXForwardedFor, h1.KindXForwardedHost, h1.KindXForwardedProto:
			if h.Kind == h1.KindOther && resp.ConnTokens && h1.ConnectionNames(resp.Headers, h.Name) {
				continue
			}
		case h1.KindUpgrade:
			if !upgrade {
				continue
			}
		default:
			continue
		}
		w.Write(h.Name)
		w.WriteString(": ")
		w.Write(h.Value)
		w.WriteString("\r\n")
	}
	switch {
	case chunked:
		w.WriteString("Transfer-Encoding: chunked\r\n")
	case length >= 0:
		w.WriteString("Content-Length: ")
		w.Write(strconv.AppendInt(scratch[:0], length, 10))
		w.WriteString("\r\n")
	}
	switch {
	case upgrade:
		w.WriteString("Connection: Upgrade\r\n")
	case closing:
		w.WriteString("Connection: close\r\n")
	case clientMinor == 0:
		w.WriteString("Connection: keep-alive\r\n")
	}
	w.WriteString("\r\n")
}
