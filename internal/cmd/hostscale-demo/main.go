// Command hostscale-demo is the small HTTP app that hostscale's agents run
// as pool instances in dev mode, demos and tests. It answers every request
// with the name of the instance that served it, and can be told to cost CPU
// and time per request, to boot slowly and to burn CPU while booting, so
// that the autoscaler, the balancer and health checking have something
// realistic to act on.
//
// Usage:
//
//	hostscale-demo [-addr host:port] [-name name] [-cpu d] [-latency d]
//	               [-startup-delay d] [-startup-cpu d]
//
// Flags (each duration flag may instead come from the environment, so that
// a pool template can set it; a flag given on the command line wins):
//
//	-addr           listen address; default ":$PORT" when PORT is set (the
//	                agent sets it), else 127.0.0.1:8000
//	-name           instance name in replies; default $HOSTSCALE_INSTANCE,
//	                else the hostname
//	-cpu            busy CPU work per request, on one core (DEMO_CPU)
//	-latency        sleep per request, after the CPU work (DEMO_LATENCY)
//	-concurrency    requests served at once, the others queue (DEMO_CONCURRENCY)
//	-startup-delay  sleep before listening, like a slow-booting app
//	                (DEMO_STARTUP_DELAY)
//	-startup-cpu    once listening, burn one core for this long in the
//	                background, like a boot-time CPU spike (DEMO_STARTUP_CPU)
//
// Endpoints:
//
//	GET /         (any other path) does the CPU work and latency, then
//	              answers 200 "served by <name>\n"; ?cpu=50ms overrides the
//	              CPU work of that request (at most 10s); ?status=503 answers
//	              with that status instead of 200 (200 to 599), as a failing
//	              app would
//	GET /healthz  200 "ok" while serving, 503 once shutting down
//	GET /stats    JSON {"name", "requests", "in_flight", "uptime_seconds"},
//	              counting only requests to /
//
// Every reply carries the header X-Instance: <name>.
//
// On SIGTERM or SIGINT it stops accepting connections, lets in-flight
// requests finish (for at most 30s) and exits 0; a second signal kills it
// at once. A bad flag or environment value exits 2.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// defaultAddr is where the demo listens outside an agent, which
	// always sets PORT.
	defaultAddr = "127.0.0.1:8000"
	// maxRequestCPU bounds the ?cpu= parameter, so that one curl cannot
	// pin a core for minutes.
	maxRequestCPU = 10 * time.Second
	// shutdownTimeout bounds the wait for in-flight requests; it is
	// below the agent's stop grace ceiling but above its 10s default, so
	// the agent's SIGKILL, not this, is what normally ends a stuck drain.
	shutdownTimeout = 30 * time.Second
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// Once the first signal has started the drain, restore the default
	// disposition so that a second one kills the process.
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil)
	stop()
	os.Exit(code)
}

// run is the whole program: it parses args (and the environment, through
// getenv), waits out the startup delay, serves until ctx is cancelled and
// then drains. ready, when not nil, is called with the listening address
// once connections are accepted. It returns the exit code: 0 after a clean
// stop, 1 when serving failed, 2 on a bad flag or environment value.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready func(addr string)) int {
	started := time.Now()
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "hostscale-demo: %v\n", err)
		return 2
	}
	if !sleepCtx(ctx, cfg.startupDelay) {
		fmt.Fprintf(stderr, "hostscale-demo %s stopped during startup delay\n", cfg.name)
		return 0
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		fmt.Fprintf(stderr, "hostscale-demo: %v\n", err)
		return 1
	}
	d := &demo{name: cfg.name, cpu: cfg.cpu, latency: cfg.latency, started: started}
	if cfg.concurrency > 0 {
		d.slots = make(chan struct{}, cfg.concurrency)
	}
	srv := &http.Server{Handler: d.routes(), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stderr, "hostscale-demo %s listening on %s\n", cfg.name, ln.Addr())

	// Shutdown order: stop the boot-time burner, then wait for it, so no
	// goroutine outlives run.
	var wg sync.WaitGroup
	defer wg.Wait()
	bootCtx, stopBoot := context.WithCancel(ctx)
	defer stopBoot()
	wg.Go(func() { burnCPU(bootCtx, cfg.startupCPU) })

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	if ready != nil {
		ready(ln.Addr().String())
	}
	select {
	case err := <-serveErr:
		// Serve returns before Shutdown only when accepting fails.
		fmt.Fprintf(stderr, "hostscale-demo %s stopped: %v\n", cfg.name, err)
		return 1
	case <-ctx.Done():
	}

	d.draining.Store(true)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		<-serveErr
		fmt.Fprintf(stderr, "hostscale-demo %s stopped: in-flight requests not finished in %v\n", cfg.name, shutdownTimeout)
		return 1
	}
	<-serveErr // http.ErrServerClosed
	fmt.Fprintf(stderr, "hostscale-demo %s stopped after %d requests\n", cfg.name, d.requests.Load())
	return 0
}

// config is the parsed command line and environment.
type config struct {
	addr         string
	name         string
	cpu          time.Duration
	latency      time.Duration
	startupDelay time.Duration
	startupCPU   time.Duration
	concurrency  int
}

// parseConfig reads the flags in args, then the environment for what the
// flags left unset. Its errors name the flag or variable at fault.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("hostscale-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "", "listen `address` (default \":$PORT\" when PORT is set, else "+defaultAddr+")")
	fs.StringVar(&c.name, "name", "", "instance `name` in replies (default $HOSTSCALE_INSTANCE, else the hostname)")
	durations := []struct {
		flag, env string
		p         *time.Duration
		usage     string
	}{
		{"cpu", "DEMO_CPU", &c.cpu, "busy CPU `duration` per request, on one core"},
		{"latency", "DEMO_LATENCY", &c.latency, "sleep `duration` per request, after the CPU work"},
		{"startup-delay", "DEMO_STARTUP_DELAY", &c.startupDelay, "sleep `duration` before listening"},
		{"startup-cpu", "DEMO_STARTUP_CPU", &c.startupCPU, "once listening, burn one core for this `duration` in the background"},
	}
	for _, d := range durations {
		fs.DurationVar(d.p, d.flag, 0, d.usage+" (env "+d.env+")")
	}
	fs.IntVar(&c.concurrency, "concurrency", 0, "serve at most this many requests to / at once, queueing the others, as an app of fixed capacity (0: no limit; env DEMO_CONCURRENCY)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, d := range durations {
		source := "-" + d.flag
		if !set[d.flag] {
			v := getenv(d.env)
			if v == "" {
				continue
			}
			source = d.env
			parsed, err := time.ParseDuration(v)
			if err != nil {
				return c, fmt.Errorf("%s: %q is not a duration like 50ms", d.env, v)
			}
			*d.p = parsed
		}
		if *d.p < 0 {
			return c, fmt.Errorf("%s: %v is negative", source, *d.p)
		}
	}

	if !set["concurrency"] {
		if v := getenv("DEMO_CONCURRENCY"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return c, fmt.Errorf("DEMO_CONCURRENCY: %q is not a number", v)
			}
			c.concurrency = n
		}
	}
	if c.concurrency < 0 {
		return c, fmt.Errorf("-concurrency: %d is negative", c.concurrency)
	}
	if c.addr == "" {
		c.addr = defaultAddr
		if p := getenv("PORT"); p != "" {
			if _, err := strconv.ParseUint(p, 10, 16); err != nil {
				return c, fmt.Errorf("PORT: %q is not a port number", p)
			}
			c.addr = ":" + p
		}
	}
	if c.name == "" {
		c.name = getenv("HOSTSCALE_INSTANCE")
	}
	if c.name == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "hostscale-demo"
		}
		c.name = h
	}
	return c, nil
}

// demo is the HTTP app. Its handlers are safe for concurrent use.
type demo struct {
	name    string
	cpu     time.Duration
	latency time.Duration
	started time.Time
	// slots, when set, bounds the requests served at once.
	slots chan struct{}

	requests atomic.Int64 // requests to / accepted, ever
	inFlight atomic.Int64 // requests to / not yet answered
	draining atomic.Bool  // set once shutdown begins
}

// routes returns the handler for all endpoints.
func (d *demo) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", d.serveWork)
	mux.HandleFunc("GET /healthz", d.serveHealth)
	mux.HandleFunc("GET /stats", d.serveStats)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", d.name)
		mux.ServeHTTP(w, r)
	})
}

func (d *demo) serveWork(w http.ResponseWriter, r *http.Request) {
	cpu := d.cpu
	if q := r.URL.Query(); q.Has("cpu") {
		v, err := time.ParseDuration(q.Get("cpu"))
		switch {
		case err != nil:
			http.Error(w, fmt.Sprintf("cpu: %q is not a duration like 50ms", q.Get("cpu")), http.StatusBadRequest)
			return
		case v < 0 || v > maxRequestCPU:
			http.Error(w, fmt.Sprintf("cpu: %v is not between 0 and %v", v, maxRequestCPU), http.StatusBadRequest)
			return
		}
		cpu = v
	}
	code := http.StatusOK
	if q := r.URL.Query(); q.Has("status") {
		v, err := strconv.Atoi(q.Get("status"))
		if err != nil || v < 200 || v > 599 {
			http.Error(w, fmt.Sprintf("status: %q is not a status code from 200 to 599", q.Get("status")), http.StatusBadRequest)
			return
		}
		code = v
	}
	d.requests.Add(1)
	d.inFlight.Add(1)
	defer d.inFlight.Add(-1)
	if d.slots != nil {
		select {
		case d.slots <- struct{}{}:
			defer func() { <-d.slots }()
		case <-r.Context().Done():
			return
		}
	}

	// Both stop early when the client goes away; shutdown does not cancel
	// r.Context(), so in-flight requests run to the end while draining.
	burnCPU(r.Context(), cpu)
	if !sleepCtx(r.Context(), d.latency) {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, "served by %s\n", d.name)
}

func (d *demo) serveHealth(w http.ResponseWriter, _ *http.Request) {
	if d.draining.Load() {
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "ok\n")
}

// stats is the body of GET /stats.
type stats struct {
	Name          string  `json:"name"`
	Requests      int64   `json:"requests"`
	InFlight      int64   `json:"in_flight"`
	UptimeSeconds float64 `json:"uptime_seconds"`
}

func (d *demo) serveStats(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(stats{
		Name:          d.name,
		Requests:      d.requests.Load(),
		InFlight:      d.inFlight.Load(),
		UptimeSeconds: time.Since(d.started).Seconds(),
	})
}
