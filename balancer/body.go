package balancer

import (
	"errors"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/hostscale/hostscale/balancer/internal/h1"
)

// copyChunk bounds one direct copy between sockets so deadlines are refreshed
// while a large body streams.
const copyChunk = 1 << 20

const maxChunkLine = 4096

// maxTrailerLines bounds trailer fields of a chunked body (they are dropped).
const maxTrailerLines = 64

var errTrailer = errors.New("too many trailer fields")

// copyFixed copies n bytes of body from src to dst: first what src has
// buffered, then straight between the sockets (splice(2) on Linux TCP), with
// an inactivity timeout per chunk. dst's buffered writer may hold data on
// return; the caller flushes. It returns the bytes copied.
func copyFixed(dst, src *side, n int64, idle time.Duration) (int64, error) {
	want := n
	if k := src.rd.Buffered(); k > 0 {
		if int64(k) > n {
			k = int(n)
		}
		if _, err := dst.bw.Write(src.rd.Peek(k)); err != nil {
			return 0, err
		}
		src.rd.Discard(k)
		n -= int64(k)
	}
	if n == 0 {
		return want, nil
	}
	if err := flush(dst, idle); err != nil {
		return want - n, err
	}
	for n > 0 {
		now := monoNow()
		src.extendRead(now, idle)
		dst.extendWrite(now, idle)
		c := n
		if c > copyChunk {
			c = copyChunk
		}
		m, err := io.CopyN(dst.c, src.c, c)
		n -= m
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return want - n, err
		}
	}
	return want, nil
}

// copyUntilEOF copies a close-delimited body and returns its bytes.
func copyUntilEOF(dst, src *side, idle time.Duration) (int64, error) {
	var copied int64
	if k := src.rd.Buffered(); k > 0 {
		if _, err := dst.bw.Write(src.rd.Peek(k)); err != nil {
			return 0, err
		}
		src.rd.Discard(k)
		copied = int64(k)
	}
	if err := flush(dst, idle); err != nil {
		return copied, err
	}
	for {
		now := monoNow()
		src.extendRead(now, idle)
		dst.extendWrite(now, idle)
		m, err := io.CopyN(dst.c, src.c, copyChunk)
		copied += m
		if err == io.EOF || err == nil && m == 0 {
			return copied, nil
		}
		if err != nil {
			return copied, err
		}
	}
}

// copyChunked copies a chunked body, validating its framing. With rechunk the
// output is chunked again (normalized: no extensions, no trailers); without,
// the payload is written bare for an HTTP/1.0 client that reads until close.
// It returns the payload bytes copied.
func copyChunked(dst, src *side, rechunk bool, idle time.Duration) (copied int64, err error) {
	var scratch [20]byte
	for {
		if !hasLine(src.rd) {
			if err := flush(dst, idle); err != nil {
				return copied, err
			}
		}
		src.extendRead(monoNow(), idle)
		line, err := src.rd.ReadLine(maxChunkLine)
		if err != nil {
			return copied, err
		}
		size, err := h1.ParseChunkSize(line)
		if err != nil {
			return copied, err
		}
		if size == 0 {
			for i := 0; ; i++ {
				if i > maxTrailerLines {
					return copied, errTrailer
				}
				line, err := src.rd.ReadLine(maxChunkLine)
				if err != nil {
					return copied, err
				}
				if len(line) == 0 {
					break
				}
			}
			if rechunk {
				if _, err := dst.bw.WriteString("0\r\n\r\n"); err != nil {
					return copied, err
				}
			}
			return copied, nil
		}
		if rechunk {
			dst.bw.Write(strconv.AppendInt(scratch[:0], size, 16))
			dst.bw.WriteString("\r\n")
		}
		m, err := copyFixed(dst, src, size, idle)
		copied += m
		if err != nil {
			return copied, err
		}
		line, err = src.rd.ReadLine(maxChunkLine)
		if err != nil {
			return copied, err
		}
		if len(line) != 0 {
			return copied, h1.ErrMalformed
		}
		if rechunk {
			if _, err := dst.bw.WriteString("\r\n"); err != nil {
				return copied, err
			}
		}
	}
}

func hasLine(rd *h1.Reader) bool {
	b := rd.Peek(rd.Buffered())
	for _, c := range b {
		if c == '\n' {
			return true
		}
	}
	return false
}

func flush(s *side, idle time.Duration) error {
	if s.bw.Buffered() == 0 {
		return nil
	}
	s.extendWrite(monoNow(), idle)
	return s.bw.Flush()
}

// pipe copies src to dst until EOF or an error, for a tunnelled connection.
func pipe(dst, src *side) error {
	if k := src.rd.Buffered(); k > 0 {
		if _, err := dst.c.Write(src.rd.Peek(k)); err != nil {
			return err
		}
		src.rd.Discard(k)
	}
	_, err := io.Copy(dst.c, src.c)
	return err
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
