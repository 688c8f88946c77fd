// Package admin serves a balancer's operational HTTP endpoints (/metrics,
// /healthz, /readyz, optionally /debug/pprof/) through internal/admin. It
// reads the balancer's statistics on each scrape and never touches the
// request path.
package admin

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hostscale/hostscale/balancer"
	"github.com/hostscale/hostscale/internal/admin"
)

// Source is what the admin server reads from a balancer.
type Source interface {
	Ready() bool
	Table() *balancer.Table
	Stats() []balancer.BackendStats
	PoolStats() []balancer.PoolStats
	Counters() balancer.Counters
}

var _ Source = (*balancer.Balancer)(nil)

// Config configures a Server.
type Config struct {
	// Addr is the listen address ("127.0.0.1:7802").
	Addr string
	// Logger receives operational events; nil discards them.
	Logger *slog.Logger
	// Pprof serves net/http/pprof under /debug/pprof/.
	Pprof bool
	// Collectors are served on /metrics beside the balancer's own metrics
	// (a controller watcher's, say).
	Collectors []prometheus.Collector
	// TLS, when set, makes the endpoints HTTPS only (tlsx.HTTPServer).
	TLS *tls.Config
}

// DefaultConfig returns the admin defaults.
func DefaultConfig() Config { return Config{Addr: "127.0.0.1:7802"} }

// Validate reports an invalid field.
func (c *Config) Validate() error {
	if c.Addr == "" {
		return errors.New("admin: Addr is empty")
	}
	return nil
}

// Server is the admin HTTP server: the shared endpoints
// (internal/admin) with the balancer's metrics and readiness.
type Server struct {
	cfg Config
	srv *admin.Server
}

// New returns a Server reading from src.
func New(cfg Config, src Source) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg := admin.NewRegistry()
	reg.MustRegister(NewCollector(src))
	for _, c := range cfg.Collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("admin: register collector: %w", err)
		}
	}
	return &Server{cfg: cfg, srv: admin.New(nil, reg, admin.Options{
		Ready: func() error {
			if !src.Ready() {
				return errors.New("no table applied")
			}
			return nil
		},
		Detail: func() string { return fmt.Sprintf("table %v", src.Table().Version) },
		Pprof:  cfg.Pprof,
		Logger: cfg.Logger,
		TLS:    cfg.TLS,
	})}, nil
}

// Handler returns the endpoints' handler.
func (s *Server) Handler() http.Handler { return s.srv.Handler() }

// Run listens on cfg.Addr and serves until ctx is cancelled.
func (s *Server) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("admin listen %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is cancelled, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.srv.Serve(ctx, ln)
}

// Collector exports a balancer's statistics as Prometheus metrics.
type Collector struct{ src Source }

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector reading src at each scrape.
func NewCollector(src Source) *Collector { return &Collector{src: src} }

const ns = "hostscale_balancer_"

var (
	labels       = []string{"pool", "backend"}
	descRequests = prometheus.NewDesc(ns+"backend_requests_total", "Requests finished per backend, including failed attempts.", labels, nil)
	descErrors   = prometheus.NewDesc(ns+"backend_errors_total", "5xx answers and transport failures per backend.", labels, nil)
	descInFlight = prometheus.NewDesc(ns+"backend_in_flight", "Requests in flight per backend.", labels, nil)
	descBusy     = prometheus.NewDesc(ns+"backend_in_flight_seconds_total", "Requests in flight per backend, integrated over time (request-seconds): its rate is the mean concurrency.", labels, nil)
	descEjected  = prometheus.NewDesc(ns+"backend_ejected", "1 while the backend is ejected by passive health checking.", labels, nil)
	descDraining = prometheus.NewDesc(ns+"backend_draining", "1 while the backend is draining.", labels, nil)
	descLatency  = prometheus.NewDesc(ns+"backend_request_duration_seconds", "Request latency per backend.", labels, nil)
	descEWMA     = prometheus.NewDesc(ns+"backend_latency_ewma_seconds", "Exponentially weighted moving average of request latency.", labels, nil)
	descWaiting  = prometheus.NewDesc(ns+"waiting_requests", "Requests held now, waiting for the pool to have a backend.", []string{"pool"}, nil)
	descHeld     = prometheus.NewDesc(ns+"held_requests_total", "Requests held for a backend whose wait ended, by outcome: served (a backend appeared), timeout (503 after the hold), closed (503 at shutdown), removed (404: the route left the table).", []string{"pool", "outcome"}, nil)
	descUnserved = prometheus.NewDesc(ns+"unserved_requests_total", "Requests that found no backend in their pool, held or not.", []string{"pool"}, nil)
	descConns    = prometheus.NewDesc(ns+"client_connections", "Client connections open.", nil, nil)
	descAccepted = prometheus.NewDesc(ns+"client_connections_total", "Client connections accepted.", nil, nil)
	descNoProxy  = prometheus.NewDesc(ns+"proxy_protocol_rejected_total", "Client connections closed for want of a valid PROXY protocol header (-proxy-protocol).", nil, nil)
	descMaxConns = prometheus.NewDesc(ns+"client_connections_limit", "The bound on client connections open at once (-max-conns).", nil, nil)
	descLimited  = prometheus.NewDesc(ns+"connection_limit_waits_total", "Times accepting client connections waited at -max-conns for one to close.", nil, nil)
	descH2Conns  = prometheus.NewDesc(ns+"http2_connections_total", "Client connections that chose HTTP/2 (-tls-http2).", nil, nil)
	descH2Open   = prometheus.NewDesc(ns+"http2_streams", "HTTP/2 streams being served now (-tls-http2).", nil, nil)
	descH2Errors = prometheus.NewDesc(ns+"http2_protocol_errors_total", "HTTP/2 connections and streams ended for a client's protocol error (-tls-http2).", nil, nil)
	descLogDrop  = prometheus.NewDesc(ns+"access_log_dropped_total", "Access log lines dropped because the file did not take them fast enough (-access-log).", nil, nil)
	descReqs     = prometheus.NewDesc(ns+"requests_total", "Request heads received.", nil, nil)
	descLocal    = prometheus.NewDesc(ns+"local_replies_total", "Answers made by the balancer itself, by status code.", []string{"code"}, nil)
	descRetries  = prometheus.NewDesc(ns+"retries_total", "Requests retried on another backend.", nil, nil)
	descEjects   = prometheus.NewDesc(ns+"ejections_total", "Backend ejections.", nil, nil)
	descApplied  = prometheus.NewDesc(ns+"tables_applied_total", "Tables applied.", nil, nil)
	descRejected = prometheus.NewDesc(ns+"tables_rejected_total", "Tables refused (invalid or stale).", nil, nil)
	descNotSaved = prometheus.NewDesc(ns+"tables_not_saved_total", "Writes of applied tables to the data directory that failed.", nil, nil)
	descIndex    = prometheus.NewDesc(ns+"table_index", "Index of the table in force.", nil, nil)
	descTerm     = prometheus.NewDesc(ns+"table_term", "Term of the table in force.", nil, nil)
)

// Describe sends nothing: the collector is unchecked, its series follow the table.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect reads the balancer's statistics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.Stats() {
		lv := []string{s.Pool, s.Address}
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(s.Requests), lv...)
		ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(s.Errors), lv...)
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(s.InFlight), lv...)
		ch <- prometheus.MustNewConstMetric(descBusy, prometheus.CounterValue, s.InFlightSeconds, lv...)
		ch <- prometheus.MustNewConstMetric(descEjected, prometheus.GaugeValue, b2f(s.Ejected), lv...)
		ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, b2f(s.Draining), lv...)
		ch <- prometheus.MustNewConstMetric(descEWMA, prometheus.GaugeValue, s.LatencyEWMA.Seconds(), lv...)
		buckets := make(map[float64]uint64, len(balancer.LatencyBuckets))
		var cum uint64
		for i, ub := range balancer.LatencyBuckets {
			cum += s.LatencyCounts[i]
			buckets[ub.Seconds()] = cum
		}
		cum += s.LatencyCounts[len(s.LatencyCounts)-1]
		ch <- prometheus.MustNewConstHistogram(descLatency, cum, s.LatencySum.Seconds(), buckets, lv...)
	}
	for _, p := range c.src.PoolStats() {
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(p.Waiting), p.Pool)
		ch <- prometheus.MustNewConstMetric(descUnserved, prometheus.CounterValue, float64(p.Unserved), p.Pool)
		for _, o := range []struct {
			name string
			n    uint64
		}{{"served", p.Held.Served}, {"timeout", p.Held.TimedOut}, {"closed", p.Held.Closed}, {"removed", p.Held.Removed}, {"gone", p.Held.Gone}} {
			ch <- prometheus.MustNewConstMetric(descHeld, prometheus.CounterValue, float64(o.n), p.Pool, o.name)
		}
	}
	k := c.src.Counters()
	ch <- prometheus.MustNewConstMetric(descConns, prometheus.GaugeValue, float64(k.OpenConnections))
	ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(k.Connections))
	ch <- prometheus.MustNewConstMetric(descNoProxy, prometheus.CounterValue, float64(k.NoProxyHeader))
	if k.MaxConns > 0 {
		ch <- prometheus.MustNewConstMetric(descMaxConns, prometheus.GaugeValue, float64(k.MaxConns))
		ch <- prometheus.MustNewConstMetric(descLimited, prometheus.CounterValue, float64(k.LimitWaits))
	}
	if k.HTTP2 {
		ch <- prometheus.MustNewConstMetric(descH2Conns, prometheus.CounterValue, float64(k.HTTP2Connections))
		ch <- prometheus.MustNewConstMetric(descH2Open, prometheus.GaugeValue, float64(k.HTTP2Streams))
		ch <- prometheus.MustNewConstMetric(descH2Errors, prometheus.CounterValue, float64(k.HTTP2Errors))
	}
	ch <- prometheus.MustNewConstMetric(descLogDrop, prometheus.CounterValue, float64(k.AccessLogDropped))
	ch <- prometheus.MustNewConstMetric(descReqs, prometheus.CounterValue, float64(k.Requests))
	for code, n := range k.LocalReplies {
		ch <- prometheus.MustNewConstMetric(descLocal, prometheus.CounterValue, float64(n), strconv.Itoa(code))
	}
	ch <- prometheus.MustNewConstMetric(descRetries, prometheus.CounterValue, float64(k.Retries))
	ch <- prometheus.MustNewConstMetric(descEjects, prometheus.CounterValue, float64(k.Ejections))
	ch <- prometheus.MustNewConstMetric(descApplied, prometheus.CounterValue, float64(k.TablesApplied))
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(k.TablesRejected))
	ch <- prometheus.MustNewConstMetric(descNotSaved, prometheus.CounterValue, float64(k.TablesNotSaved))
	if t := c.src.Table(); t != nil {
		ch <- prometheus.MustNewConstMetric(descIndex, prometheus.GaugeValue, float64(t.Version.Index))
		ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(t.Version.Term))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
