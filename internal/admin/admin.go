// Package admin serves a binary's operational HTTP endpoints: /metrics in
// the Prometheus text format, /healthz (the process is alive), /readyz
// (the process can do its job, as its component defines it) and, when
// asked, /debug/pprof/.
package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hostscale/hostscale/internal/logging"
)

// ReadyFunc reports why the component is not ready, or nil when it is.
type ReadyFunc func() error

// Options are what a component adds to the endpoints.
type Options struct {
	// Ready decides /readyz; nil is always ready.
	Ready ReadyFunc
	// Detail, when set, follows "ready" in /readyz's answer (the table a
	// balancer serves, say).
	Detail func() string
	// Pprof serves net/http/pprof under /debug/pprof/. The server then
	// has no write timeout: net/http/pprof refuses a profile longer than
	// it, and the default CPU profile takes 30s.
	Pprof bool
	// Logger receives "serving"; nil discards it.
	Logger *slog.Logger
	// TLS, when set, is spoken on every connection (tlsx.HTTPServer):
	// the endpoints are then HTTPS only.
	TLS *tls.Config
	// Guard, when set, wraps the handlers of /metrics and /debug/pprof/
	// (an ACL check: acl.Authorizer.HTTP); /healthz and /readyz stay open
	// to health checkers.
	Guard func(path string, h http.Handler) http.Handler
}

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Server is the admin HTTP server.
type Server struct {
	handler      http.Handler
	lis          net.Listener
	logger       *slog.Logger
	writeTimeout time.Duration
	tls          *tls.Config
	// serving is the http.Server of a running Serve, for Close.
	serving atomic.Pointer[http.Server]
}

// New returns a server on lis, ready to Run, serving reg's metrics and
// what opts add. lis may be nil for a server that only Serves or hands out
// its Handler.
func New(lis net.Listener, reg prometheus.Gatherer, opts Options) *Server {
	mux := http.NewServeMux()
	guard := opts.Guard
	if guard == nil {
		guard = func(_ string, h http.Handler) http.Handler { return h }
	}
	mux.Handle("GET /metrics", guard("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if opts.Ready != nil {
			if err := opts.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		if opts.Detail != nil {
			_, _ = fmt.Fprintf(w, "ready %s\n", opts.Detail())
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	if opts.Pprof {
		mux.Handle("/debug/pprof/", guard("/debug/pprof/", http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", guard("/debug/pprof/", http.HandlerFunc(pprof.Cmdline)))
		mux.Handle("/debug/pprof/profile", guard("/debug/pprof/", http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", guard("/debug/pprof/", http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", guard("/debug/pprof/", http.HandlerFunc(pprof.Trace)))
	}
	s := &Server{handler: mux, lis: lis, logger: logging.OrDiscard(opts.Logger).With("component", "admin"), writeTimeout: 30 * time.Second, tls: opts.TLS}
	if opts.Pprof {
		s.writeTimeout = 0
	}
	return s
}

// Handler returns the endpoints' handler.
func (s *Server) Handler() http.Handler { return s.handler }

// Addr is the bound address of the listener given to New.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Run serves on the listener given to New until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error { return s.Serve(ctx, s.lis) }

// Close closes the listener and the connections of a running Serve at
// once, without waiting for requests under way; Serve then returns.
func (s *Server) Close() {
	if srv := s.serving.Load(); srv != nil {
		_ = srv.Close()
	}
}

// Serve serves on lis until ctx is cancelled, then shuts down within a few
// seconds. With Options.TLS, it speaks TLS on lis; a plaintext request
// gets 400.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	scheme := "http"
	if s.tls != nil {
		lis, scheme = tls.NewListener(lis, s.tls), "https"
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      s.writeTimeout,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}
	s.serving.Store(srv)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	s.logger.Info("serving", "addr", lis.Addr().String(), "scheme", scheme)
	select {
	case err := <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			return nil // Close
		}
		return fmt.Errorf("admin http: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		_ = srv.Close()
	}
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	return err
}
