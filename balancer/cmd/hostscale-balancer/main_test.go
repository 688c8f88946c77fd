package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/balancer/internal/wstest"
	"github.com/hostscale/hostscale/balancer/watch"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/testcluster"
	"github.com/hostscale/hostscale/internal/version"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hostscale-balancer-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "hostscale-balancer")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		err := goleak.Find(
			// grpc-go's resolver and balancer goroutines of closed client
			// connections (the in-process controllers') exit asynchronously.
			goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestParseFlags_defaults(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:8080", o.bal.ListenAddr)
	require.Equal(t, "127.0.0.1:7802", o.adm.Addr)
	require.Equal(t, time.Second, o.statsInterval)
	require.Equal(t, 1024, o.bal.MaxHeldPerPool)
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	require.Equal(t, max(int(min(lim.Cur, 1<<30)/2)-64, 64), o.bal.MaxConns, "half the open-file limit %d, less a margin", lim.Cur)
	o, err = parseFlags([]string{"-max-held", "0"}, io.Discard)
	require.NoError(t, err)
	require.Zero(t, o.bal.MaxHeldPerPool, "0 holds no request")
	for _, tc := range []struct {
		arg  string
		want time.Duration
	}{{"0", 0}, {"100ms", 100 * time.Millisecond}, {"5s", 5 * time.Second}} {
		o, err := parseFlags([]string{"-stats-interval", tc.arg}, io.Discard)
		require.NoError(t, err, tc.arg)
		require.Equal(t, tc.want, o.statsInterval, tc.arg)
	}
	o, err = parseFlags([]string{"-trusted-proxies", "10.0.0.0/8, 192.168.1.1"}, io.Discard)
	require.NoError(t, err)
	require.Len(t, o.bal.TrustedProxies, 2)
	require.Equal(t, "192.168.1.1/32", o.bal.TrustedProxies[1].String())
}

func TestParseFlags_controllersAndName(t *testing.T) {
	o, err := parseFlags([]string{"-controllers", " 10.0.0.1:7800, ctl-2:7800,10.0.0.1:7800", "-name", "edge-1"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, []string{"10.0.0.1:7800", "ctl-2:7800"}, o.controllers)
	require.Equal(t, "edge-1", o.name)

	host, err := os.Hostname()
	require.NoError(t, err)
	o, err = parseFlags([]string{"-controllers", "10.0.0.1:7800"}, io.Discard)
	if want := watch.NameFromHostname(host); want != "" {
		require.NoError(t, err)
		require.Equal(t, want, o.name, "the default name is the sanitized hostname")
	}

	o, err = parseFlags(nil, io.Discard)
	require.NoError(t, err)
	require.Empty(t, o.controllers, "no controller unless asked")
}

func TestParseFlags_configFile(t *testing.T) {
	o, err := parseFlags([]string{"-config", "../../../deployments/config/balancer.conf"}, io.Discard)
	require.NoError(t, err)
	require.Len(t, o.controllers, 3)
	require.Equal(t, "edge-1", o.name)
	require.Equal(t, "0.0.0.0:80", o.bal.ListenAddr)
	require.Equal(t, "/var/lib/hostscale-balancer", o.bal.DataDir)
	require.Len(t, o.bal.TrustedProxies, 1)

	// The command line wins over the file.
	o, err = parseFlags([]string{"-config", "../../../deployments/config/balancer.conf", "-listen", "127.0.0.1:9090"}, io.Discard)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9090", o.bal.ListenAddr)
}

func TestBinary_versionPrintsAndExits(t *testing.T) {
	out, err := exec.Command(binPath, "-version").CombinedOutput()
	require.NoError(t, err)
	require.Equal(t, "hostscale-balancer "+version.Version+"\n", string(out))
}

func writeTable(t *testing.T, dir, body string) string {
	t.Helper()
	p := filepath.Join(dir, "table.json")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestBinary_badFlagOrTableFileStopsWithMessage(t *testing.T) {
	dir := t.TempDir()
	badTable := writeTable(t, dir, `{"version": {"term": 1, "index": 1}, "pools": [
  {"name": "web", "hosts": ["*"], "backends": [{"address": "not-an-address"}]}
]}`)
	badConf := filepath.Join(dir, "bad.conf")
	require.NoError(t, os.WriteFile(badConf, []byte("# a balancer\nlisten = 127.0.0.1:0\nno-such-key = 1\n"), 0o600))
	emptyDir, garbageDir := t.TempDir(), t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(garbageDir, "x.pem"), []byte("-----BEGIN CERTIFICATE-----\ngarbage\n"), 0o600))
	badValue := filepath.Join(dir, "value.conf")
	require.NoError(t, os.WriteFile(badValue, []byte("max-held = lots\n"), 0o600))
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-trusted-proxies", "10.0.0.0/33"}, 2, `-trusted-proxies: "10.0.0.0/33" is not a CIDR`},
		{[]string{"-connect-timeout", "soon"}, 2, `invalid value "soon" for flag -connect-timeout`},
		{[]string{"-header-timeout", "0s"}, 2, "HeaderTimeout must be positive"},
		{[]string{"-log-level", "loud"}, 2, "-log-level"},
		{[]string{"-max-held", "-1"}, 2, "MaxHeldPerPool must not be negative, got -1"},
		{[]string{"-max-held", "many"}, 2, `invalid value "many" for flag -max-held`},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"-config", badConf}, 2, badConf + `:3: unknown key "no-such-key"`},
		{[]string{"-config", badValue}, 2, badValue + `:1: max-held: invalid value "lots"`},
		{[]string{"-config", filepath.Join(dir, "missing.conf")}, 2, "config file: open " + filepath.Join(dir, "missing.conf")},
		{[]string{"-controllers", "10.0.0.1"}, 2, `-controllers: "10.0.0.1": expected host:port`},
		{[]string{"-controllers", "10.0.0.1:7800,10.0.0.2:0"}, 2, `-controllers: "10.0.0.2:0": port must be 1-65535`},
		{[]string{"-name", "Edge 1"}, 2, `-name: "Edge 1" is not a DNS label`},
		{[]string{"-tls-listen", "127.0.0.1:0"}, 2, "-tls-cert-dir: needed with -tls-listen"},
		{[]string{"-tls-cert-dir", dir}, 2, "-tls-listen: needed with -tls-cert-dir"},
		{[]string{"-tls-http2"}, 2, "-tls-http2: needs -tls-listen"},
		{[]string{"-http2-max-streams", "0"}, 2, "-http2-max-streams: 0 is not in 1..1048576"},
		{[]string{"-tls-listen", "127.0.0.1:0", "-tls-cert-dir", emptyDir}, 2, "-tls-cert-dir: " + emptyDir + ": no .pem file"},
		{[]string{"-tls-listen", "127.0.0.1:0", "-tls-cert-dir", garbageDir}, 2, "-tls-cert-dir: " + filepath.Join(garbageDir, "x.pem") + ": want a certificate and its private key"},
		{[]string{"-tls-listen", "127.0.0.1:0", "-tls-cert-dir", filepath.Join(dir, "nope")}, 2, "-tls-cert-dir: stat " + filepath.Join(dir, "nope")},
		{[]string{"-max-conns", "-1"}, 2, "MaxConns must not be negative, got -1"},
		{[]string{"-access-log-format", "apache"}, 2, `-access-log-format: "apache": expected combined or json`},
		{[]string{"-access-log", filepath.Join(dir, "nope", "access.log")}, 2, "-access-log: open " + filepath.Join(dir, "nope", "access.log")},
		{[]string{"-http-tls", "on"}, 2, "-http-tls on: needs -tls-cert and -tls-key"},
		{[]string{"-token-file", filepath.Join(dir, "no-token")}, 2, "-token-file: token file: open " + filepath.Join(dir, "no-token")},
		{[]string{"-token-file", badConf}, 2, "-token-file: token file " + badConf + ": the token holds a space"},
		{[]string{"-stats-interval", "-1s"}, 2, "-stats-interval: -1s must be 0 (no reports) or at least 100ms"},
		{[]string{"-stats-interval", "50ms"}, 2, "-stats-interval: 50ms must be 0 (no reports) or at least 100ms"},
		{[]string{"-listen", "127.0.0.1:0", "-http-addr", "127.0.0.1:0", "-table", badTable}, 1,
			"-table: " + badTable + ": balancer: invalid table: pools[0].backends[0].address"},
		{[]string{"-listen", "127.0.0.1:0", "-http-addr", "127.0.0.1:0", "-table", filepath.Join(dir, "missing.json")}, 1,
			"-table: read table: open " + filepath.Join(dir, "missing.json")},
	}
	for _, tc := range tests {
		cmd := exec.Command(binPath, tc.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee), "%v: %v", tc.args, err)
		require.Equal(t, tc.code, ee.ExitCode(), "%v: %s", tc.args, stderr.String())
		require.Contains(t, stderr.String(), tc.want, tc.args)
	}
}

// proc is a running balancer binary.
type proc struct {
	cmd          *exec.Cmd
	proxy, admin string
	mu           sync.Mutex
	log          bytes.Buffer
	done         chan struct{}
}

var servingRE = regexp.MustCompile(`msg=serving component=(\w+) addr=(\S+)`)

func startBinary(t *testing.T, args ...string) *proc {
	t.Helper()
	args = append([]string{"-listen", "127.0.0.1:0", "-http-addr", "127.0.0.1:0"}, args...)
	return startBinaryCmd(t, exec.Command(binPath, args...))
}

// startBinaryCmd starts cmd, the balancer with its listen flags (port 0),
// and waits for both its addresses.
func startBinaryCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	addrs := make(chan [2]string, 2)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.log.WriteString(line + "\n")
			p.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				addrs <- [2]string{m[1], m[2]}
			}
		}
	}()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.After(10 * time.Second)
	for p.proxy == "" || p.admin == "" {
		select {
		case a := <-addrs:
			if a[0] == "balancer" {
				p.proxy = a[1]
			} else {
				p.admin = a[1]
			}
		case <-deadline:
			t.Fatalf("binary did not start: %s", p.logs())
		}
	}
	return p
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("binary did not stop on SIGTERM")
	}
	err := p.cmd.Wait()
	require.NoError(t, err, p.logs())
}

// peakRSS returns the process's peak resident set size (VmHWM).
func (p *proc) peakRSS(t *testing.T) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	require.NoError(t, err)
	m := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(b)
	require.NotNil(t, m)
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

func startServer(t *testing.T, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func tableJSON(index int, addrs ...string) string {
	var bs []string
	for _, a := range addrs {
		bs = append(bs, fmt.Sprintf(`{"address": %q}`, a))
	}
	return fmt.Sprintf(`{"version": {"term": 1, "index": %d}, "pools": [
  {"name": "web", "hosts": ["*"], "backends": [%s]}
]}`, index, strings.Join(bs, ", "))
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBinary_servesStaticTableAndAdminEndpoints(t *testing.T) {
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.Header.Get("X-Forwarded-For"))
	}))
	p := startBinary(t, "-table", writeTable(t, t.TempDir(), tableJSON(7, be)))
	code, body := get(t, "http://"+p.proxy+"/")
	require.Equal(t, 200, code)
	require.Equal(t, "hello 127.0.0.1", body)

	code, body = get(t, "http://"+p.admin+"/healthz")
	require.Equal(t, 200, code)
	code, body = get(t, "http://"+p.admin+"/readyz")
	require.Equal(t, 200, code)
	require.Contains(t, body, "1/7")
	// The request is counted once the proxy has finished it, which may be
	// just after the client read the answer.
	want := fmt.Sprintf(`hostscale_balancer_backend_requests_total{backend=%q,pool="web"} 1`, be)
	require.Eventually(t, func() bool {
		code, body = get(t, "http://"+p.admin+"/metrics")
		return code == 200 && strings.Contains(body, want)
	}, 5*time.Second, 20*time.Millisecond, "metrics never counted the request")
	require.Contains(t, body, "hostscale_balancer_table_index 7")
	require.Contains(t, body, "hostscale_balancer_backend_request_duration_seconds_bucket")
	require.Contains(t, body, "go_goroutines")
}

func TestBinary_dataDirServesLastTableAfterRestart(t *testing.T) {
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "saved") }))
	dataDir := t.TempDir()
	p := startBinary(t, "-data-dir", dataDir, "-table", writeTable(t, t.TempDir(), tableJSON(3, be)))
	p.stop(t)
	_, err := os.Stat(filepath.Join(dataDir, "table.json"))
	require.NoError(t, err)

	p = startBinary(t, "-data-dir", dataDir)
	code, body := get(t, "http://"+p.proxy+"/")
	require.Equal(t, 200, code)
	require.Equal(t, "saved", body)
	_, body = get(t, "http://"+p.admin+"/readyz")
	require.Contains(t, body, "1/3")
}

// pattern yields n deterministic bytes without holding them in memory.
type pattern struct{ n, off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		x := uint64(p.off + int64(i))
		b[i] = byte(x*2654435761>>13) ^ byte(x>>20)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func digest(r io.Reader) (int64, string, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return n, hex.EncodeToString(h.Sum(nil)), err
}

// TestBinary_largeTransfersStreamWithBoundedMemory moves a body up and down
// through the real binary and checks bytes and peak RSS. HOSTSCALE_SLOW=1 moves
// 1 GiB each way; the default run moves 64 MiB and asserts the same bound.
func TestBinary_largeTransfersStreamWithBoundedMemory(t *testing.T) {
	size := int64(64 << 20)
	if os.Getenv("HOSTSCALE_SLOW") == "1" {
		size = 1 << 30
	}
	const rssLimit = 64 << 20
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/download":
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			io.Copy(w, &pattern{n: size})
		case "/upload":
			n, sum, err := digest(r.Body)
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			fmt.Fprintf(w, "%d %s", n, sum)
		default:
			wstest.EchoHandler("").ServeHTTP(w, r)
		}
	}))
	p := startBinary(t, "-table", writeTable(t, t.TempDir(), tableJSON(1, be)))
	_, want, _ := digest(&pattern{n: size})
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Minute}

	resp, err := c.Get("http://" + p.proxy + "/download")
	require.NoError(t, err)
	n, sum, err := digest(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, size, n)
	require.Equal(t, want, sum, "download is byte-exact")

	req, err := http.NewRequest("POST", "http://"+p.proxy+"/upload", &pattern{n: size})
	require.NoError(t, err)
	req.ContentLength = size
	resp, err = c.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, fmt.Sprintf("%d %s", size, want), string(body), "upload is byte-exact")

	ws, err := wstest.Dial(p.proxy, "app.example", "/ws", 5*time.Second)
	require.NoError(t, err)
	got, err := ws.Echo([]byte("through the binary"), 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, "through the binary", string(got))
	ws.Close()

	rss := p.peakRSS(t)
	t.Logf("moved %d MiB each way; balancer peak RSS %.1f MiB", size>>20, float64(rss)/(1<<20))
	require.Less(t, rss, int64(rssLimit))
}

func TestBinary_sighupReloadsTableFile(t *testing.T) {
	a := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "a") }))
	b := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "b") }))
	dir := t.TempDir()
	file := writeTable(t, dir, tableJSON(1, a))
	p := startBinary(t, "-table", file)
	_, body := get(t, "http://"+p.proxy+"/")
	require.Equal(t, "a", body)

	writeTable(t, dir, tableJSON(2, b))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		_, body := get(t, "http://"+p.proxy+"/")
		return body == "b"
	}, 10*time.Second, 10*time.Millisecond)

	// A broken file is logged and the table in force stays.
	writeTable(t, dir, `{"pools": [`)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(p.logs(), "reload table") }, 10*time.Second, 10*time.Millisecond)
	_, body = get(t, "http://"+p.proxy+"/")
	require.Equal(t, "b", body)
}

// TestBinary_controllersFeedTablesNewerThanTheStaticOne runs the binary with
// a -table file and -controllers against an in-process cluster: the file's
// table serves until the cluster has a newer one.
func TestBinary_controllersFeedTablesNewerThanTheStaticOne(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{
		Nodes: 3, Launcher: servertest.Launcher{},
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader, _, err := c.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	var controllers []string
	for _, n := range c.Nodes() {
		controllers = append(controllers, n.GRPCAddr)
	}
	static := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "static") }))
	fromCluster := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from cluster") }))

	p := startBinary(t, "-table", writeTable(t, t.TempDir(), tableJSON(1, static)),
		"-controllers", strings.Join(controllers, ","), "-name", "edge-bin", "-data-dir", t.TempDir())
	metric := `hostscale_balancer_controller_connected{controller="`
	require.Eventually(t, func() bool {
		_, body := get(t, "http://"+p.admin+"/metrics")
		return strings.Contains(body, "\n"+metric) && regexp.MustCompile(regexp.QuoteMeta(metric)+`[^"]+"} 1`).MatchString(body)
	}, 10*time.Second, 20*time.Millisecond, "never connected: %s", p.logs())
	// The cluster's table (no pools yet) is not newer than the file's.
	_, body := get(t, "http://"+p.proxy+"/")
	require.Equal(t, "static", body)

	created, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: "web", Backends: []*pb.Backend{{Address: fromCluster}}}})
	require.NoError(t, err)
	require.Greater(t, created.Index, uint64(1))
	require.Eventually(t, func() bool {
		_, body := get(t, "http://"+p.proxy+"/")
		return body == "from cluster"
	}, 10*time.Second, 20*time.Millisecond, "logs: %s", p.logs())
	_, body = get(t, "http://"+p.admin+"/readyz")
	require.Contains(t, body, fmt.Sprintf("/%d", created.Index))
	// At least the one table with the pool: the count follows the table
	// going into force, and a change of leader may send the table in force
	// again, which counts as applied too.
	applied := regexp.MustCompile(`\nhostscale_balancer_controller_tables_total\{result="applied"\} [1-9]`)
	require.Eventually(t, func() bool {
		_, body = get(t, "http://"+p.admin+"/metrics")
		return applied.MatchString(body)
	}, 10*time.Second, 20*time.Millisecond, "metrics: %s", body)
	require.Contains(t, body, `hostscale_balancer_controller_tables_total{result="refused"} 0`)
	require.Contains(t, body, "hostscale_balancer_controller_stats_reports_total")
	require.Contains(t, body, "hostscale_balancer_controller_stats_failures_total")
	p.stop(t)
	require.Contains(t, p.logs(), "controllers="+strings.Join(controllers, ","))
}

// TestBinary_proxyProtocol: with -proxy-protocol, a request behind a PROXY
// protocol v1 header reaches the backend with the header's client in
// X-Forwarded-For; one without is closed unanswered, and /metrics counts
// it.
func TestBinary_proxyProtocol(t *testing.T) {
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.Header.Get("X-Forwarded-For"))
	}))
	p := startBinary(t, "-proxy-protocol", "-table", writeTable(t, t.TempDir(), tableJSON(1, be)))
	send := func(head string) (string, error) {
		c, err := net.Dial("tcp", p.proxy)
		require.NoError(t, err)
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err = io.WriteString(c, head+"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	body, err := send("PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n")
	require.NoError(t, err)
	require.Equal(t, "hello 203.0.113.7", body)
	_, err = send("")
	require.Error(t, err, "a request without a PROXY header is answered")
	require.Eventually(t, func() bool {
		_, m := get(t, "http://"+p.admin+"/metrics")
		return strings.Contains(m, "hostscale_balancer_proxy_protocol_rejected_total 1")
	}, 5*time.Second, 20*time.Millisecond)
}

// TestBinary_accessLog: with -access-log, every request gets a line, JSON
// here; a SIGHUP after the file was moved away reopens it, and the lines
// left are written when the balancer stops.
func TestBinary_accessLog(t *testing.T) {
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	p := startBinary(t, "-access-log", path, "-access-log-format", "json", "-table", writeTable(t, dir, tableJSON(1, be)))
	code, _ := get(t, "http://"+p.proxy+"/first")
	require.Equal(t, 200, code)
	read := func(path string) []map[string]any {
		b, _ := os.ReadFile(path)
		var out []map[string]any
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if line == "" {
				continue
			}
			var m map[string]any
			require.NoError(t, json.Unmarshal([]byte(line), &m), line)
			out = append(out, m)
		}
		return out
	}
	require.Eventually(t, func() bool { return len(read(path)) == 1 }, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, "/first", read(path)[0]["target"])
	require.Equal(t, be, read(path)[0]["backend"])

	require.NoError(t, os.Rename(path, path+".1"))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		_, err := os.Stat(path)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "reopened on SIGHUP")
	code, _ = get(t, "http://"+p.proxy+"/second")
	require.Equal(t, 200, code)
	p.stop(t)
	second := read(path)
	require.Len(t, second, 1)
	require.Equal(t, "/second", second[0]["target"])
	require.Len(t, read(path+".1"), 1)
}
