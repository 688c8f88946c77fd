// Package wstest is a minimal RFC 6455 WebSocket echo server and client for
// tests of the balancer's upgrade tunnelling. It supports single-frame text
// and binary messages and the close handshake; nothing else.
package wstest

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

const guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func accept(key string) string {
	h := sha1.Sum([]byte(key + guid))
	return base64.StdEncoding.EncodeToString(h[:])
}

// EchoHandler upgrades the request and echoes every message until the client
// closes. tag, if not empty, is prefixed to each echoed message so a test can
// tell which backend answered.
func EchoHandler(tag string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "not a websocket request", http.StatusBadRequest)
			return
		}
		key := r.Header.Get("Sec-WebSocket-Key")
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", accept(key))
		if err := rw.Flush(); err != nil {
			return
		}
		for {
			op, msg, err := readFrame(rw.Reader)
			if err != nil {
				return
			}
			if op == 8 {
				writeFrame(c, 8, nil, false)
				return
			}
			if err := writeFrame(c, op, append([]byte(tag), msg...), false); err != nil {
				return
			}
		}
	})
}

// Conn is the client side of a WebSocket connection.
type Conn struct {
	c  net.Conn
	br *bufio.Reader
}

// Dial opens a WebSocket to addr with the given Host header and path.
func Dial(addr, host, path string, timeout time.Duration) (*Conn, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	var k [16]byte
	rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, host, key)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != accept(key) {
		c.Close()
		return nil, fmt.Errorf("handshake: status %d, accept %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	c.SetDeadline(time.Time{})
	return &Conn{c: c, br: br}, nil
}

// Echo sends msg and returns the message received back.
func (w *Conn) Echo(msg []byte, timeout time.Duration) ([]byte, error) {
	w.c.SetDeadline(time.Now().Add(timeout))
	defer w.c.SetDeadline(time.Time{})
	if err := writeFrame(w.c, 2, msg, true); err != nil {
		return nil, err
	}
	op, got, err := readFrame(w.br)
	if err != nil {
		return nil, err
	}
	if op != 2 {
		return nil, fmt.Errorf("opcode %d", op)
	}
	return got, nil
}

// Close performs the close handshake and closes the connection.
func (w *Conn) Close() error {
	w.c.SetDeadline(time.Now().Add(5 * time.Second))
	writeFrame(w.c, 8, nil, true)
	readFrame(w.br)
	return w.c.Close()
}

func writeFrame(w io.Writer, op byte, payload []byte, mask bool) error {
	hdr := []byte{0x80 | op}
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, m|byte(n))
	case n < 1<<16:
		hdr = append(hdr, m|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, m|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	body := payload
	if mask {
		var key [4]byte
		rand.Read(key[:])
		hdr = append(hdr, key[:]...)
		body = make([]byte, len(payload))
		for i := range payload {
			body[i] = payload[i] ^ key[i%4]
		}
	}
	_, err := w.Write(append(hdr, body...))
	return err
}

func readFrame(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, errors.New("fragmented frames are not supported")
	}
	op := h[0] & 0x0f
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 16<<20 {
		return 0, nil, errors.New("frame too large")
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	return op, p, nil
}
