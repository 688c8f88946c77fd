package h1

import (
	"bytes"
	"errors"
	"io"
	"sync"
)

// ErrHeadTooLarge means a message head did not fit the configured limit (431).
var ErrHeadTooLarge = errors.New("h1: message head too large")

// ErrLineTooLong is a chunk-size or trailer line over the limit.
var ErrLineTooLong = errors.New("h1: line too long")

// smallBuf is the size of pooled read buffers; heads larger than this grow the
// buffer for that connection only.
const smallBuf = 4096

var bufPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}

// Reader is a buffered reader tailored to HTTP/1.1: it finds message heads in
// place (no copy), then hands out body bytes, reading large bodies straight
// from the source. Not safe for concurrent use.
type Reader struct {
	src     io.Reader
	buf     []byte
	pooled  *[]byte
	r, w    int
	scanned int // bytes of buf[r:w] already searched for a head end
}

// NewReader returns a Reader over src with a pooled buffer; call Release when
// done with it.
func NewReader(src io.Reader) *Reader {
	p := bufPool.Get().(*[]byte)
	return &Reader{src: src, buf: *p, pooled: p}
}

// Release returns the buffer to the pool. The Reader must not be used after.
func (r *Reader) Release() {
	if r.pooled != nil {
		bufPool.Put(r.pooled)
		r.pooled = nil
	}
	r.buf = nil
}

// Buffered returns the number of bytes ready without reading.
func (r *Reader) Buffered() int { return r.w - r.r }

// Source returns the underlying reader.
func (r *Reader) Source() io.Reader { return r.src }

// Head returns the message head at the read position if it is completely
// buffered, skipping leading empty lines (RFC 9112 §2.2). It does not consume
// the head; call Discard(len(head)) after use.
func (r *Reader) Head() ([]byte, bool) {
	for r.w-r.r >= 2 && r.buf[r.r] == '\r' && r.buf[r.r+1] == '\n' {
		r.r += 2
		r.scanned = 0
	}
	b := r.buf[r.r:r.w]
	n := HeadEnd(b, r.scanned)
	if n < 0 {
		r.scanned = len(b)
		return nil, false
	}
	r.scanned = 0
	return b[:n], true
}

// Fill reads once from the source into free buffer space, compacting or
// growing the buffer so that up to max bytes can be buffered. It returns
// ErrHeadTooLarge when max bytes are already buffered.
func (r *Reader) Fill(max int) (int, error) {
	if r.w-r.r >= max {
		return 0, ErrHeadTooLarge
	}
	if r.w == len(r.buf) {
		if r.r > 0 {
			copy(r.buf, r.buf[r.r:r.w])
			r.w -= r.r
			r.r = 0
		} else {
			n := 2 * len(r.buf)
			if n > max+smallBuf {
				n = max + smallBuf
			}
			nb := make([]byte, n)
			copy(nb, r.buf[:r.w])
			r.Release()
			r.buf = nb
		}
	}
	n, err := r.src.Read(r.buf[r.w:])
	r.w += n
	if n > 0 {
		err = nil
	}
	return n, err
}

// Discard consumes n buffered bytes; n must not exceed Buffered().
func (r *Reader) Discard(n int) {
	r.r += n
	if r.r == r.w {
		r.r, r.w = 0, 0
	}
	r.scanned = 0
}

// Peek returns up to n buffered bytes without consuming them.
func (r *Reader) Peek(n int) []byte {
	if n > r.w-r.r {
		n = r.w - r.r
	}
	return r.buf[r.r : r.r+n]
}

// Read reads buffered bytes first; with nothing buffered it reads from the
// source directly into p when p is at least as large as the buffer.
func (r *Reader) Read(p []byte) (int, error) {
	if r.r == r.w {
		if len(p) >= len(r.buf) {
			return r.src.Read(p)
		}
		r.r, r.w = 0, 0
		n, err := r.src.Read(r.buf)
		if n == 0 {
			return 0, err
		}
		r.w = n
	}
	n := copy(p, r.buf[r.r:r.w])
	r.Discard(n)
	return n, nil
}

// ReadLine returns the next CRLF-terminated line without its terminator,
// consumed. The slice is valid until the next call. Lines longer than max are
// an error.
func (r *Reader) ReadLine(max int) ([]byte, error) {
	for {
		if i := bytes.IndexByte(r.buf[r.r:r.w], '\n'); i >= 0 {
			line := r.buf[r.r : r.r+i+1]
			r.Discard(i + 1)
			if len(line) < 2 || line[len(line)-2] != '\r' {
				return nil, ErrMalformed
			}
			return line[:len(line)-2], nil
		}
		if r.w-r.r > max {
			return nil, ErrLineTooLong
		}
		n, err := r.Fill(max + 2)
		if n == 0 {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}
