package balancer

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// runAccessLog runs l until the test ends, or until the returned stop,
// which waits for its last write.
func runAccessLog(t *testing.T, l *AccessLog) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-done)
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitClosed waits until b has no client connection open: the requests
// answered have been logged, which happens once the answer is sent.
func waitClosed(t *testing.T, b *Balancer) {
	t.Helper()
	require.Eventually(t, func() bool { return b.Counters().OpenConnections == 0 }, 5*time.Second, time.Millisecond)
}

// rawRequest sends a request as written and returns the status answered.
func rawRequest(t *testing.T, addr, request string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, request)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestAccessLog_combined: each request answered gets a line in the
// combined format, proxied or answered by the balancer, with the body's
// bytes; quotes and control bytes in the request are escaped.
func TestAccessLog_combined(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // no Content-Length: chunked
		}
		io.WriteString(w, "hello, world")
	}))
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := OpenAccessLog(path, AccessLogCombined)
	require.NoError(t, err)
	stop := runAccessLog(t, l)
	cfg := testConfig(t)
	cfg.AccessLog = l
	tbl := oneTable(1, "", be.addr)
	tbl.Pools[0].Hosts = []string{"app.example"}
	bal, addr := startBalancer(t, cfg, tbl)

	require.Equal(t, 200, rawRequest(t, addr, "GET /a?b=1 HTTP/1.1\r\nHost: app.example\r\nUser-Agent: curl/8 \"x\"\r\nReferer: http://r.example/\r\nConnection: close\r\n\r\n"))
	require.Equal(t, 200, rawRequest(t, addr, "GET /chunked HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"))
	require.Equal(t, 404, rawRequest(t, addr, "GET /x HTTP/1.0\r\nHost: other.example\r\n\r\n"))
	require.Equal(t, 400, rawRequest(t, addr, "GET /\x01 HTTP/1.1\r\nHost: app.example\r\n\r\n"))
	waitClosed(t, bal)
	stop()

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	require.Len(t, lines, 4, string(b))
	stamp := `\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]`
	// Each connection logs its request once its answer is sent: the
	// lines of one client's requests, one after another, may come in any
	// order.
	for _, want := range []string{
		`"GET /a\?b=1 HTTP/1\.1" 200 12 "http://r\.example/" "curl/8 \\x22x\\x22"`,
		`"GET /chunked HTTP/1\.1" 200 12 "-" "-"`,
		`"GET /x HTTP/1\.0" 404 14 "-" "-"`,
		`"-" 400 16 "-" "-"`, // a request that does not parse
	} {
		re := regexp.MustCompile(`^127\.0\.0\.1 - - ` + stamp + ` ` + want + `$`)
		n := 0
		for _, l := range lines {
			if re.MatchString(l) {
				n++
			}
		}
		require.Equal(t, 1, n, "lines matching %s in\n%s", re, b)
	}
}

// TestAccessLog_json: one JSON object per request, with the pool, the
// backend and the duration; a reopened file takes the lines after it.
func TestAccessLog_json(t *testing.T) {
	be := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, "made")
	}))
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	l, err := OpenAccessLog(path, AccessLogJSON)
	require.NoError(t, err)
	stop := runAccessLog(t, l)
	cfg := testConfig(t)
	cfg.AccessLog = l
	bal, addr := startBalancer(t, cfg, oneTable(1, "", be.addr))

	require.Equal(t, 201, rawRequest(t, addr, "POST /items HTTP/1.1\r\nHost: app.example\r\nContent-Length: 2\r\nUser-Agent: caf\xc3\xa9\xff\r\nConnection: close\r\n\r\nhi"))
	// Rotated: the file moved away, then reopened.
	rotated := filepath.Join(dir, "access.log.1")
	require.NoError(t, os.Rename(path, rotated))
	require.Eventually(t, func() bool {
		b, _ := os.ReadFile(rotated)
		return len(b) > 0
	}, 5*time.Second, 10*time.Millisecond, "the line written within a second")
	require.NoError(t, l.Reopen())
	require.Equal(t, 201, rawRequest(t, addr, "GET /after HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n"))
	waitClosed(t, bal)
	stop()

	var first, second map[string]any
	b, err := os.ReadFile(rotated)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &first), string(b))
	b, err = os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &second), string(b))
	require.Equal(t, "POST", first["method"])
	require.Equal(t, "/items", first["target"])
	require.Equal(t, "HTTP/1.1", first["proto"])
	require.Equal(t, "app.example", first["host"])
	require.Equal(t, "127.0.0.1", first["client"])
	require.EqualValues(t, 201, first["status"])
	require.EqualValues(t, 4, first["bytes"])
	require.Equal(t, "web", first["pool"])
	require.Equal(t, be.addr, first["backend"])
	require.Equal(t, false, first["tls"])
	require.Equal(t, "café\ufffd", first["user_agent"], "bytes that are not UTF-8 become U+FFFD")
	require.GreaterOrEqual(t, first["duration"], 0.02)
	_, err = time.Parse(time.RFC3339Nano, first["time"].(string))
	require.NoError(t, err)
	require.Equal(t, "/after", second["target"])
}

// TestAccessLog_aStuckFileDropsLinesNotRequests: while the file takes no
// writes, requests go on and the lines past the bound are dropped and
// counted.
func TestAccessLog_aStuckFileDropsLinesNotRequests(t *testing.T) {
	r, w := io.Pipe() // nobody reads: a write blocks
	t.Cleanup(func() { r.Close() })
	l := &AccessLog{json: true, kick: make(chan struct{}, 1)}
	l.out.Store(&output{w})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	rec := &accessRecord{start: time.Now(), startMono: monoNow(), status: 200, pool: "web"}
	// Enough lines to pass the bound while the writer is stuck on the
	// first batch.
	line := appendJSONLine(nil, rec, "127.0.0.1", monoNow())
	n := 2*accessLogMax/len(line) + 100
	// add never waits for the file: were it to, this loop would not end.
	for range n {
		l.add(rec, "127.0.0.1", monoNow())
	}
	require.Eventually(t, func() bool { return l.Dropped() > 0 }, 5*time.Second, 10*time.Millisecond)
	require.Less(t, l.Dropped(), uint64(n))

	// Stopping gives up on the stuck file after a while.
	cancel()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "the file took no write")
	case <-time.After(2 * accessLogClose):
		t.Fatal("Run did not give up on a stuck file")
	}
}

// TestAccessLog_reopenWhileAWriteIsStuck: a SIGHUP's Reopen does not wait
// for a write stuck in the old file (a hung network filesystem): the
// lines after it go to the new file.
func TestAccessLog_reopenWhileAWriteIsStuck(t *testing.T) {
	r, w := io.Pipe()
	t.Cleanup(func() { r.Close() })
	path := filepath.Join(t.TempDir(), "access.log")
	l := &AccessLog{path: path, json: true, kick: make(chan struct{}, 1)}
	l.out.Store(&output{w})
	stop := runAccessLog(t, l)
	rec := &accessRecord{start: time.Now(), startMono: monoNow(), status: 200, pool: "before"}
	l.add(rec, "127.0.0.1", monoNow())
	// The writer's write starts within a second: the pipe hands over one
	// byte, then takes no more.
	started := make(chan struct{})
	go func() {
		var b [1]byte
		_, _ = r.Read(b[:])
		close(started)
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("the line was not written")
	}
	reopened := make(chan error, 1)
	go func() { reopened <- l.Reopen() }()
	select {
	case err := <-reopened:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Reopen waits for the stuck write")
	}
	rec.pool = "after"
	l.add(rec, "127.0.0.1", monoNow())
	stop()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), `"pool":"after"`)
	require.NotContains(t, string(b), `"pool":"before"`)
}

func TestOpenAccessLog_badInput(t *testing.T) {
	_, err := OpenAccessLog(filepath.Join(t.TempDir(), "x.log"), "apache")
	require.EqualError(t, err, `-access-log-format: "apache": expected combined or json`)
	_, err = OpenAccessLog(filepath.Join(t.TempDir(), "missing", "x.log"), AccessLogJSON)
	require.ErrorContains(t, err, "-access-log: open ")
	require.Regexp(t, regexp.MustCompile(`no such file or directory`), err.Error())
}
