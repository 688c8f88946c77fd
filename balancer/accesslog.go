package balancer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/hostscale/hostscale/balancer/internal/h1"
)

// Access log formats.
const (
	// AccessLogCombined is the NCSA combined format of Apache and nginx:
	// client - - [time] "request line" status bytes "referer" "user agent".
	AccessLogCombined = "combined"
	// AccessLogJSON is one JSON object per line, with the pool, the
	// backend and the duration besides.
	AccessLogJSON = "json"
)

// Bounds of the access log's buffering: lines go to the file every
// accessLogFlush, or sooner once accessLogKick bytes wait; beyond
// accessLogMax bytes waiting (a file that stopped taking writes), lines are
// dropped and counted rather than hold up a request.
const (
	accessLogFlush = time.Second
	accessLogKick  = 64 << 10
	accessLogMax   = 4 << 20
	accessLogClose = 5 * time.Second
	// reopenWait bounds how long Reopen waits for the old file to close.
	reopenWait = time.Second
)

// AccessLog writes one line per request answered, as nginx's access_log
// with a buffer: requests append their line to memory, and one goroutine
// (Run) writes them out, so a slow disk never slows a request. It is safe
// for concurrent use.
type AccessLog struct {
	path string
	json bool

	mu      sync.Mutex
	buf     []byte
	dropped atomic.Uint64
	kick    chan struct{}

	// out is the file Run writes and Reopen replaces.
	out atomic.Pointer[output]
}

type output struct{ io.WriteCloser }

// OpenAccessLog opens path for appending ("-": standard output) and returns
// a log in format (AccessLogCombined or AccessLogJSON); Run writes it.
func OpenAccessLog(path, format string) (*AccessLog, error) {
	if err := CheckAccessLogFormat(format); err != nil {
		return nil, err
	}
	l := &AccessLog{path: path, json: format == AccessLogJSON, kick: make(chan struct{}, 1)}
	out, err := l.open()
	if err != nil {
		return nil, err
	}
	l.out.Store(&output{out})
	return l, nil
}

// CheckAccessLogFormat reports a format OpenAccessLog does not know.
func CheckAccessLogFormat(format string) error {
	switch format {
	case AccessLogCombined, AccessLogJSON, "":
		return nil
	}
	return fmt.Errorf("-access-log-format: %q: expected %s or %s", format, AccessLogCombined, AccessLogJSON)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func (l *AccessLog) open() (io.WriteCloser, error) {
	if l.path == "-" {
		return nopCloser{os.Stdout}, nil
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("-access-log: %w", err)
	}
	return f, nil
}

// Reopen opens the file again, for a log rotated by renaming (logrotate's
// default, then a SIGHUP); lines written from then on go to the new file.
// On an error the file in use stays.
func (l *AccessLog) Reopen() error {
	out, err := l.open()
	if err != nil {
		return err
	}
	old := l.out.Swap(&output{out})
	// A write to the old file may be stuck (a hung network filesystem):
	// the new file is in use already, and the old one is closed once the
	// write returns.
	closed := make(chan error, 1)
	go func() { closed <- old.Close() }()
	select {
	case err := <-closed:
		return err
	case <-time.After(reopenWait):
		return nil
	}
}

// Dropped counts the lines dropped because too many waited.
func (l *AccessLog) Dropped() uint64 { return l.dropped.Load() }

// Run writes the waiting lines every second, or sooner when many wait,
// until ctx ends; then it writes what is left and closes the file. A file
// that takes no writes (a hung network filesystem) holds up its return by
// accessLogClose at most.
func (l *AccessLog) Run(ctx context.Context) error {
	final := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		t := time.NewTicker(accessLogFlush)
		defer t.Stop()
		var spare []byte
		for {
			select {
			case <-final:
				l.write(spare)
				done <- l.out.Load().Close()
				return
			case <-t.C:
			case <-l.kick:
			}
			spare = l.write(spare)
		}
	}()
	<-ctx.Done()
	close(final)
	select {
	case err := <-done:
		return err
	case <-time.After(accessLogClose):
		return fmt.Errorf("access log: the file took no write for %v; the last lines are lost", accessLogClose)
	}
}

// write writes the waiting lines; spare is an empty buffer to take their
// place, and the written one is returned, emptied, as the next spare.
func (l *AccessLog) write(spare []byte) []byte {
	l.mu.Lock()
	lines := l.buf
	l.buf = spare[:0]
	l.mu.Unlock()
	if len(lines) > 0 {
		out := l.out.Load()
		_, err := out.Write(lines)
		if errors.Is(err, os.ErrClosed) && l.out.Load() != out {
			// Reopened meanwhile: the new file takes them.
			_, err = l.out.Load().Write(lines)
		}
		if err != nil && !errors.Is(err, os.ErrClosed) {
			// Counted as dropped: lines written in part are lost too.
			l.dropped.Add(uint64(countLines(lines)))
		}
	}
	if cap(lines) > 2*accessLogKick {
		return nil // after a burst, do not keep a large buffer
	}
	return lines[:0]
}

func countLines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}

// accessRecord is what a request leaves for its log line. The request's
// own fields are copied into buf, as the read buffer they point into is
// reused by the next request.
type accessRecord struct {
	start             time.Time
	startMono         int64
	parsed            bool
	method, target    []byte
	host, ua, referer []byte
	minor             int
	// status is the answer's (0: none was sent, logged as 499, the
	// client having gone, as nginx does); bytes its body's.
	status        int
	bytes         int64
	pool, backend string
	tls           bool
	// h2: the request came as an HTTP/2 stream.
	h2  bool
	buf []byte
}

// begin starts the record of a request whose head was read.
func (r *accessRecord) begin(tls, h2 bool) {
	r.start, r.startMono, r.tls, r.h2 = time.Now(), monoNow(), tls, h2
	r.parsed, r.status, r.bytes, r.pool, r.backend = false, 0, 0, "", ""
	r.method, r.target, r.host, r.ua, r.referer = nil, nil, nil, nil, nil
}

// capture copies the fields of a parsed request.
func (r *accessRecord) capture(req *h1.Request) {
	r.parsed, r.minor = true, req.Minor
	var ua, referer []byte
	for i := range req.Headers {
		h := &req.Headers[i]
		switch {
		case h.Kind != h1.KindOther:
		case ua == nil && bytes.EqualFold(h.Name, []byte("User-Agent")):
			ua = h.Value
		case referer == nil && bytes.EqualFold(h.Name, []byte("Referer")):
			referer = h.Value
		}
	}
	b := r.buf[:0]
	field := func(v []byte) []byte {
		start := len(b)
		b = append(b, v...)
		return b[start:len(b):len(b)]
	}
	// Slices into b are taken once b has its final array.
	need := len(req.Method) + len(req.Target) + len(req.Host) + len(ua) + len(referer)
	if cap(b) < need {
		b = make([]byte, 0, need)
	}
	r.method, r.target, r.host, r.ua, r.referer = field(req.Method), field(req.Target), field(req.Host), field(ua), field(referer)
	r.buf = b
}

// add appends the line of r.
func (l *AccessLog) add(r *accessRecord, client string, now int64) {
	l.mu.Lock()
	if len(l.buf) > accessLogMax {
		l.mu.Unlock()
		l.dropped.Add(1)
		return
	}
	n := len(l.buf)
	if l.json {
		l.buf = appendJSONLine(l.buf, r, client, now)
	} else {
		l.buf = appendCombinedLine(l.buf, r, client)
	}
	kick := n < accessLogKick && len(l.buf) >= accessLogKick
	l.mu.Unlock()
	if kick {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// answered is the status logged: 499 for a request left unanswered.
func (r *accessRecord) answered() int {
	if r.status == 0 {
		return 499
	}
	return r.status
}

func dash(b []byte) []byte {
	if len(b) == 0 {
		return []byte{'-'}
	}
	return b
}

// appendCombinedLine appends r in the combined format; quoted fields have
// '"', '\' and bytes outside printable ASCII escaped as \xHH, as nginx
// does.
func appendCombinedLine(b []byte, r *accessRecord, client string) []byte {
	b = append(b, client...)
	b = append(b, " - - ["...)
	b = r.start.AppendFormat(b, "02/Jan/2006:15:04:05 -0700")
	b = append(b, "] \""...)
	if r.parsed {
		b = appendEscaped(b, r.method)
		b = append(b, ' ')
		b = appendEscaped(b, r.target)
		if r.h2 {
			b = append(b, " HTTP/2.0"...)
		} else {
			b = append(b, " HTTP/1."...)
			b = strconv.AppendInt(b, int64(r.minor), 10)
		}
	} else {
		b = append(b, '-')
	}
	b = append(b, "\" "...)
	b = strconv.AppendInt(b, int64(r.answered()), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, r.bytes, 10)
	b = append(b, " \""...)
	b = appendEscaped(b, dash(r.referer))
	b = append(b, "\" \""...)
	b = appendEscaped(b, dash(r.ua))
	return append(b, "\"\n"...)
}

func appendEscaped(b, s []byte) []byte {
	const hex = "0123456789ABCDEF"
	for _, c := range s {
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b = append(b, '\\', 'x', hex[c>>4], hex[c&15])
			continue
		}
		b = append(b, c)
	}
	return b
}

// appendJSONLine appends r as a JSON object and a newline.
func appendJSONLine(b []byte, r *accessRecord, client string, now int64) []byte {
	b = append(b, `{"time":"`...)
	b = r.start.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z07:00")
	b = append(b, `","client":`...)
	b = appendJSONString(b, []byte(client))
	if r.parsed {
		b = append(b, `,"method":`...)
		b = appendJSONString(b, r.method)
		b = append(b, `,"target":`...)
		b = appendJSONString(b, r.target)
		if r.h2 {
			b = append(b, `,"proto":"HTTP/2.0","host":`...)
		} else {
			b = append(b, `,"proto":"HTTP/1.`...)
			b = strconv.AppendInt(b, int64(r.minor), 10)
			b = append(b, `","host":`...)
		}
		b = appendJSONString(b, r.host)
	}
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.answered()), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, r.bytes, 10)
	b = append(b, `,"duration":`...)
	b = strconv.AppendFloat(b, time.Duration(now-r.startMono).Seconds(), 'f', 6, 64)
	b = append(b, `,"pool":`...)
	b = appendJSONString(b, []byte(r.pool))
	b = append(b, `,"backend":`...)
	b = appendJSONString(b, []byte(r.backend))
	b = append(b, `,"tls":`...)
	b = strconv.AppendBool(b, r.tls)
	if r.parsed {
		b = append(b, `,"referer":`...)
		b = appendJSONString(b, r.referer)
		b = append(b, `,"user_agent":`...)
		b = appendJSONString(b, r.ua)
	}
	return append(b, "}\n"...)
}

// appendJSONString appends s as a JSON string; bytes that are not UTF-8
// become U+FFFD.
func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for len(s) > 0 {
		c := s[0]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20 || c == 0x7f:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&15])
			default:
				b = append(b, c)
			}
			s = s[1:]
			continue
		}
		r, size := utf8.DecodeRune(s)
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[:size]...)
		}
		s = s[size:]
	}
	return append(b, '"')
}
