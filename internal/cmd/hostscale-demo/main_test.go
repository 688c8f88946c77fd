package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// envOf is a getenv that reads m.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// get runs one GET through h in-process.
func get(h http.Handler, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func TestDemo_root_answersWithNameOnAnyPath(t *testing.T) {
	h := (&demo{name: "web-1", started: time.Now()}).routes()
	for _, target := range []string{"/", "/some/path", "/?x=1"} {
		rec := get(h, target)
		require.Equal(t, http.StatusOK, rec.Code, target)
		require.Equal(t, "served by web-1\n", rec.Body.String(), target)
		require.Equal(t, "web-1", rec.Header().Get("X-Instance"), target)
		require.Equal(t, "text/plain; charset=utf-8", rec.Header().Get("Content-Type"), target)
	}
}

func TestDemo_cpu_burnsForTheFlagOrTheQueryParameter(t *testing.T) {
	tests := []struct {
		name     string
		flagCPU  time.Duration
		target   string
		atLeast  time.Duration
		lessThan time.Duration
	}{
		{name: "flag", flagCPU: 30 * time.Millisecond, target: "/", atLeast: 30 * time.Millisecond, lessThan: 5 * time.Second},
		{name: "param", target: "/?cpu=40ms", atLeast: 40 * time.Millisecond, lessThan: 5 * time.Second},
		{name: "param overrides flag", flagCPU: time.Hour, target: "/?cpu=0s", lessThan: 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &demo{name: "web-1", cpu: tt.flagCPU, started: time.Now()}
			start := time.Now()
			rec := get(d.routes(), tt.target)
			elapsed := time.Since(start)
			require.Equal(t, http.StatusOK, rec.Code)
			require.GreaterOrEqual(t, elapsed, tt.atLeast)
			require.Less(t, elapsed, tt.lessThan)
			require.EqualValues(t, 1, d.requests.Load())
		})
	}
}

func TestDemo_badCPUParameter_is400NamingIt(t *testing.T) {
	for _, v := range []string{"abc", "", "50", "-1ms", "11s"} {
		t.Run(v, func(t *testing.T) {
			d := &demo{name: "web-1", started: time.Now()}
			rec := get(d.routes(), "/?cpu="+v)
			require.Equal(t, http.StatusBadRequest, rec.Code)
			require.Contains(t, rec.Body.String(), "cpu:")
			require.Equal(t, "web-1", rec.Header().Get("X-Instance"))
			require.Zero(t, d.requests.Load(), "a rejected request is not counted")
		})
	}
}

func TestDemo_statusParameter(t *testing.T) {
	d := &demo{name: "web-1", started: time.Now()}
	rec := get(d.routes(), "/?status=503")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "served by web-1\n", rec.Body.String())
	require.EqualValues(t, 1, d.requests.Load())
	for _, v := range []string{"abc", "", "199", "600", "5e2"} {
		rec := get(d.routes(), "/?status="+v)
		require.Equal(t, http.StatusBadRequest, rec.Code, v)
		require.Contains(t, rec.Body.String(), "status:", v)
	}
	require.EqualValues(t, 1, d.requests.Load(), "a rejected request is not counted")
}

func TestDemo_stats_countsRequestsToRootOnly(t *testing.T) {
	d := &demo{name: "web-1", started: time.Now().Add(-2 * time.Second)}
	h := d.routes()
	for range 3 {
		require.Equal(t, http.StatusOK, get(h, "/").Code)
	}
	require.Equal(t, http.StatusOK, get(h, "/healthz").Code)

	rec := get(h, "/stats")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
	var st stats
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &st))
	require.Equal(t, "web-1", st.Name)
	require.EqualValues(t, 3, st.Requests)
	require.Zero(t, st.InFlight)
	require.GreaterOrEqual(t, st.UptimeSeconds, 2.0)

	var raw map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &raw))
	require.ElementsMatch(t, []string{"name", "requests", "in_flight", "uptime_seconds"}, keys(raw))
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestDemo_healthz_is503OnceDraining(t *testing.T) {
	d := &demo{name: "web-1", started: time.Now()}
	h := d.routes()
	rec := get(h, "/healthz")
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "ok\n", rec.Body.String())

	d.draining.Store(true)
	rec = get(h, "/healthz")
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	require.Equal(t, "web-1", rec.Header().Get("X-Instance"))
}

func TestParseConfig_defaultsEnvAndFlags(t *testing.T) {
	host, err := os.Hostname()
	require.NoError(t, err)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want config
	}{
		{
			name: "defaults",
			want: config{addr: "127.0.0.1:8000", name: host},
		},
		{
			name: "agent environment",
			env:  map[string]string{"PORT": "9001", "HOSTSCALE_INSTANCE": "web-3"},
			want: config{addr: ":9001", name: "web-3"},
		},
		{
			name: "durations from env",
			env: map[string]string{
				"DEMO_CPU": "5ms", "DEMO_LATENCY": "6ms", "DEMO_STARTUP_DELAY": "7ms", "DEMO_STARTUP_CPU": "8ms",
			},
			want: config{
				addr: "127.0.0.1:8000", name: host,
				cpu: 5 * time.Millisecond, latency: 6 * time.Millisecond,
				startupDelay: 7 * time.Millisecond, startupCPU: 8 * time.Millisecond,
			},
		},
		{
			name: "flags win over env, even a bad env value",
			args: []string{"-addr", "127.0.0.1:0", "-name", "n1", "-cpu", "1ms", "-latency", "0s", "-startup-delay", "2ms", "-startup-cpu", "3ms"},
			env: map[string]string{
				"PORT": "not-a-port", "HOSTSCALE_INSTANCE": "web-3",
				"DEMO_CPU": "5ms", "DEMO_LATENCY": "bad", "DEMO_STARTUP_DELAY": "-1s", "DEMO_STARTUP_CPU": "8ms",
			},
			want: config{
				addr: "127.0.0.1:0", name: "n1",
				cpu: time.Millisecond, startupDelay: 2 * time.Millisecond, startupCPU: 3 * time.Millisecond,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseConfig(tt.args, envOf(tt.env), io.Discard)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestRun_badFlagOrEnv_exits2NamingIt(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "bad flag duration", args: []string{"-cpu", "abc"}, want: "-cpu"},
		{name: "negative flag", args: []string{"-latency=-1s"}, want: "-latency: -1s is negative"},
		{name: "unknown flag", args: []string{"-nope"}, want: "-nope"},
		{name: "positional argument", args: []string{"serve"}, want: `unexpected argument "serve"`},
		{name: "bad DEMO_CPU", env: map[string]string{"DEMO_CPU": "abc"}, want: "DEMO_CPU"},
		{name: "negative DEMO_LATENCY", env: map[string]string{"DEMO_LATENCY": "-5ms"}, want: "DEMO_LATENCY"},
		{name: "bad DEMO_STARTUP_DELAY", env: map[string]string{"DEMO_STARTUP_DELAY": "soon"}, want: "DEMO_STARTUP_DELAY"},
		{name: "unitless DEMO_STARTUP_CPU", env: map[string]string{"DEMO_STARTUP_CPU": "3"}, want: "DEMO_STARTUP_CPU"},
		{name: "bad PORT", env: map[string]string{"PORT": "http"}, want: "PORT"},
		{name: "PORT out of range", env: map[string]string{"PORT": "70000"}, want: "PORT"},
		{name: "bad DEMO_CONCURRENCY", env: map[string]string{"DEMO_CONCURRENCY": "many"}, want: "DEMO_CONCURRENCY"},
		{name: "negative concurrency", args: []string{"-concurrency=-2"}, want: "-concurrency"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			ready := func(string) { t.Error("ready called for a bad configuration") }
			code := run(t.Context(), tt.args, envOf(tt.env), &stderr, ready)
			require.Equal(t, 2, code, stderr.String())
			require.Contains(t, stderr.String(), tt.want)
		})
	}
}

// started is a run in the background.
type started struct {
	addr   string
	cancel context.CancelFunc
	exit   chan int
	stderr *bytes.Buffer // read only after exit has delivered
}

// start runs run with args in the background and waits until it listens.
func start(t *testing.T, args []string, env map[string]string) *started {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	s := &started{cancel: cancel, exit: make(chan int, 1), stderr: &bytes.Buffer{}}
	addrc := make(chan string, 1)
	go func() { s.exit <- run(ctx, args, envOf(env), s.stderr, func(a string) { addrc <- a }) }()
	select {
	case s.addr = <-addrc:
	case code := <-s.exit:
		t.Fatalf("run exited %d before listening: %s", code, s.stderr)
	case <-time.After(10 * time.Second):
		t.Fatal("run did not listen within 10s")
	}
	return s
}

// wait returns run's exit code, failing the test if run has not returned
// within 10s; the caller cancels first.
func (s *started) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-s.exit:
		return code
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of cancel")
		return -1
	}
}

func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type reply struct {
	code int
	body string
	err  error
}

func fetch(c *http.Client, url string) reply {
	resp, err := c.Get(url)
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return reply{code: resp.StatusCode, body: string(b), err: err}
}

func TestRun_servesThenFinishesInFlightRequestOnCancel(t *testing.T) {
	s := start(t, []string{"-addr", "127.0.0.1:0", "-name", "web-1", "-latency", "500ms"}, nil)
	c := newClient(t)
	base := "http://" + s.addr

	r := fetch(c, base+"/healthz")
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.code)
	r = fetch(c, base+"/")
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.code)
	require.Equal(t, "served by web-1\n", r.body)

	slow := make(chan reply, 1)
	go func() { slow <- fetch(c, base+"/") }()
	require.Eventually(t, func() bool {
		r := fetch(c, base+"/stats")
		var st stats
		return r.err == nil && json.Unmarshal([]byte(r.body), &st) == nil && st.InFlight == 1
	}, 5*time.Second, 5*time.Millisecond, "the slow request never showed as in flight")
	s.cancel()

	select {
	case r = <-slow:
	case <-time.After(10 * time.Second):
		t.Fatal("the in-flight request did not finish")
	}
	require.NoError(t, r.err)
	require.Equal(t, http.StatusOK, r.code)
	require.Equal(t, "served by web-1\n", r.body)

	require.Equal(t, 0, s.wait(t), s.stderr.String())
	log := s.stderr.String()
	require.Contains(t, log, "hostscale-demo web-1 listening on 127.0.0.1:")
	require.Contains(t, log, "hostscale-demo web-1 stopped after 2 requests")
	require.Error(t, fetch(c, base+"/healthz").err, "still accepting after exit")
}

func TestRun_listensOnlyAfterStartupDelay(t *testing.T) {
	begin := time.Now()
	s := start(t, []string{"-addr", "127.0.0.1:0"}, map[string]string{"DEMO_STARTUP_DELAY": "100ms"})
	require.GreaterOrEqual(t, time.Since(begin), 100*time.Millisecond)
	s.cancel()
	require.Equal(t, 0, s.wait(t), s.stderr.String())
}

func TestRun_cancelDuringStartupDelay_exits0WithoutListening(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var stderr bytes.Buffer
	ready := func(string) { t.Error("ready called although cancelled before listening") }
	code := run(ctx, []string{"-addr", "127.0.0.1:0", "-startup-delay", "1h"}, envOf(nil), &stderr, ready)
	require.Equal(t, 0, code, stderr.String())
}

func TestRun_startupCPU_burnsWhileServingAndStopsOnCancel(t *testing.T) {
	s := start(t, []string{"-addr", "127.0.0.1:0", "-name", "web-1", "-startup-cpu", "1h"}, nil)
	r := fetch(newClient(t), "http://"+s.addr+"/")
	require.NoError(t, r.err)
	require.Equal(t, "served by web-1\n", r.body)
	s.cancel()
	require.Equal(t, 0, s.wait(t), s.stderr.String())
}

func TestRun_addrInUse_exits1(t *testing.T) {
	s := start(t, []string{"-addr", "127.0.0.1:0"}, nil)
	var stderr bytes.Buffer
	code := run(t.Context(), []string{"-addr", s.addr}, envOf(nil), &stderr, nil)
	require.Equal(t, 1, code)
	require.Contains(t, stderr.String(), s.addr)
	s.cancel()
	require.Equal(t, 0, s.wait(t))
}

func TestBurnCPU_stopsWhenContextIsDone(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	begin := time.Now()
	burnCPU(ctx, time.Hour)
	require.Less(t, time.Since(begin), 5*time.Second)
}

func TestServeWork_concurrencyQueuesTheRest(t *testing.T) {
	d := &demo{name: "web-1", latency: 200 * time.Millisecond, started: time.Now(), slots: make(chan struct{}, 1)}
	srv := httptest.NewServer(d.routes())
	defer srv.Close()
	start := time.Now()
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			resp, err := http.Get(srv.URL + "/")
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	// One at a time: three requests of 200ms take at least 600ms.
	require.GreaterOrEqual(t, time.Since(start), 600*time.Millisecond)
}
