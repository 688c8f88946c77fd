package balancer

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Config configures a Balancer. Start from DefaultConfig.
type Config struct {
	// ListenAddr is where Run listens for client HTTP ("127.0.0.1:8080").
	ListenAddr string
	// TLSListenAddr, when set, is where Run also listens for client HTTPS,
	// with TLS (CertStore.TLSConfig, say); requests that came over it go
	// upstream with X-Forwarded-Proto: https.
	TLSListenAddr string
	TLS           *tls.Config
	// HTTP2, with TLS, also offers HTTP/2 by ALPN ("h2" before
	// "http/1.1"), as nginx's http2 and HAProxy's alpn h2,http/1.1 do: a
	// client that takes it sends its requests as streams of one
	// connection, which go to the backends as HTTP/1.1 (see h2.go).
	// HTTP2MaxStreams bounds the streams a client may have open at once
	// on one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
	HTTP2           bool
	HTTP2MaxStreams int
	// ProxyProtocol makes Run require a PROXY protocol header (v1 or v2)
	// at the start of every client connection, on both addresses, as
	// HAProxy's accept-proxy does behind a load balancer that sends one
	// (HAProxy's send-proxy, an AWS NLB): the source it gives is the
	// client (X-Forwarded-For, TrustedProxies). A connection without a
	// valid one within HeaderTimeout is closed; a LOCAL header (the load
	// balancer's own health check) keeps the socket's peer.
	ProxyProtocol bool
	// AccessLog, when set, gets a line for every request answered (or
	// left unanswered); its Run writes them.
	AccessLog *AccessLog
	// DataDir, if set, receives every applied table (DataDir/table.json,
	// written atomically) so a restart can serve the last table without a
	// controller. See LoadDataDir.
	DataDir string
	// TrustedProxies are the peers whose X-Forwarded-* headers are kept and
	// extended; from anyone else they are replaced.
	TrustedProxies []netip.Prefix

	// ConnectTimeout bounds dialing a backend.
	ConnectTimeout time.Duration
	// HeaderTimeout bounds receiving a request head from its first byte (for a
	// new connection, from accept).
	HeaderTimeout time.Duration
	// IdleTimeout closes a client keep-alive connection idle this long, and
	// bounds inactivity while a body streams either way.
	IdleTimeout time.Duration
	// ResponseHeaderTimeout bounds waiting for a backend's response head after
	// the request was sent.
	ResponseHeaderTimeout time.Duration
	// UpstreamIdleTimeout closes pooled backend connections idle this long.
	// Keep it below the backends' own keep-alive timeout.
	UpstreamIdleTimeout time.Duration
	// MaxIdlePerBackend bounds pooled idle connections per backend.
	MaxIdlePerBackend int
	// MaxHeaderBytes bounds a request or response head.
	MaxHeaderBytes int
	// MaxHeaders bounds the number of header fields of a head.
	MaxHeaders int
	// ShutdownTimeout bounds waiting for requests in flight when Run stops.
	ShutdownTimeout time.Duration

	Health HealthConfig
	Retry  RetryConfig
	// SlowStart ramps a backend newly added to an existing pool from
	// SlowStartMinPercent of its weight to its full weight over this window.
	// Zero disables slow start.
	SlowStart           time.Duration
	SlowStartMinPercent int
	// MaxHeldPerPool bounds the requests held at once for a pool without a
	// backend (Pool.HoldWhenEmpty); beyond it a request is answered 503 at
	// once, as Envoy's max_pending_requests does.
	MaxHeldPerPool int
	// MaxConns bounds the client connections open at once, as HAProxy's
	// maxconn: at the bound the balancer stops accepting until one
	// closes, and new connections wait in the kernel's listen queue
	// rather than take file descriptors the open ones need. 0: no bound.
	MaxConns int

	// Logger receives operational events; nil discards them.
	Logger *slog.Logger
}

// HealthConfig configures passive health checking (outlier ejection).
type HealthConfig struct {
	// Consecutive5xx ejects a backend after this many 5xx responses in a row
	// (0 disables).
	Consecutive5xx int
	// ConsecutiveConnectFailures ejects a backend after this many failed
	// connects or resets before a response in a row (0 disables).
	ConsecutiveConnectFailures int
	// BaseEjection is the first ejection's length; the n-th consecutive
	// ejection lasts n×BaseEjection, at most MaxEjection.
	BaseEjection time.Duration
	MaxEjection  time.Duration
	// MaxEjectionPercent caps the share of a pool's (non-draining) backends
	// ejected at once; a failing backend beyond the cap stays in rotation.
	// The share is rounded down, so a one-backend pool is never ejected.
	MaxEjectionPercent int
}

// RetryConfig configures retries to another backend.
type RetryConfig struct {
	// Enabled turns retries on.
	Enabled bool
	// BudgetPercent caps retries in flight at this share of a pool's requests
	// in flight, but always allows MinConcurrent.
	BudgetPercent int
	MinConcurrent int
}

// DefaultConfig returns the configuration the binary starts from.
func DefaultConfig() Config {
	return Config{
		ListenAddr:            "127.0.0.1:8080",
		ConnectTimeout:        2 * time.Second,
		HeaderTimeout:         10 * time.Second,
		IdleTimeout:           60 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		UpstreamIdleTimeout:   30 * time.Second,
		MaxIdlePerBackend:     256,
		MaxHeaderBytes:        64 << 10,
		MaxHeaders:            128,
		ShutdownTimeout:       10 * time.Second,
		Health: HealthConfig{
			Consecutive5xx:             5,
			ConsecutiveConnectFailures: 1,
			BaseEjection:               5 * time.Second,
			MaxEjection:                5 * time.Minute,
			MaxEjectionPercent:         50,
		},
		Retry: RetryConfig{
			Enabled:       true,
			BudgetPercent: 20,
			MinConcurrent: 3,
		},
		SlowStart:           10 * time.Second,
		SlowStartMinPercent: 10,
		MaxHeldPerPool:      1024,
		HTTP2MaxStreams:     100,
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	if c.TLSListenAddr != "" && c.TLS == nil {
		return errors.New("config: TLSListenAddr needs TLS")
	}
	if c.HTTP2 && (c.TLS == nil || c.HTTP2MaxStreams < 1 || c.HTTP2MaxStreams > 1<<20) {
		return fmt.Errorf("config: HTTP2 needs TLS and HTTP2MaxStreams of 1..1048576, got %d", c.HTTP2MaxStreams)
	}
	pos := func(name string, d time.Duration) error {
		if d <= 0 {
			return fmt.Errorf("config: %s must be positive, got %v", name, d)
		}
		return nil
	}
	for _, e := range []error{
		pos("ConnectTimeout", c.ConnectTimeout),
		pos("HeaderTimeout", c.HeaderTimeout),
		pos("IdleTimeout", c.IdleTimeout),
		pos("ResponseHeaderTimeout", c.ResponseHeaderTimeout),
		pos("UpstreamIdleTimeout", c.UpstreamIdleTimeout),
		pos("ShutdownTimeout", c.ShutdownTimeout),
	} {
		if e != nil {
			return e
		}
	}
	switch {
	case c.MaxHeaderBytes < 1024 || c.MaxHeaderBytes > 16<<20:
		return fmt.Errorf("config: MaxHeaderBytes must be 1024..16MiB, got %d", c.MaxHeaderBytes)
	case c.MaxHeaders < 1:
		return fmt.Errorf("config: MaxHeaders must be positive, got %d", c.MaxHeaders)
	case c.MaxIdlePerBackend < 0:
		return errors.New("config: MaxIdlePerBackend must not be negative")
	case c.Health.Consecutive5xx < 0 || c.Health.ConsecutiveConnectFailures < 0:
		return errors.New("config: Health thresholds must not be negative")
	case c.Health.MaxEjectionPercent < 0 || c.Health.MaxEjectionPercent > 100:
		return fmt.Errorf("config: Health.MaxEjectionPercent must be 0..100, got %d", c.Health.MaxEjectionPercent)
	case c.Health.BaseEjection <= 0 || c.Health.MaxEjection < c.Health.BaseEjection:
		return errors.New("config: Health.BaseEjection must be positive and at most MaxEjection")
	case c.Retry.BudgetPercent < 0 || c.Retry.BudgetPercent > 100 || c.Retry.MinConcurrent < 0:
		return errors.New("config: Retry.BudgetPercent must be 0..100 and MinConcurrent not negative")
	case c.SlowStart < 0 || c.SlowStartMinPercent < 1 || c.SlowStartMinPercent > 100:
		return errors.New("config: SlowStart must not be negative and SlowStartMinPercent must be 1..100")
	case c.MaxHeldPerPool < 0:
		return fmt.Errorf("config: MaxHeldPerPool must not be negative, got %d", c.MaxHeldPerPool)
	case c.MaxConns < 0:
		return fmt.Errorf("config: MaxConns must not be negative, got %d", c.MaxConns)
	}
	for _, p := range c.TrustedProxies {
		if !p.IsValid() {
			return errors.New("config: TrustedProxies holds an invalid prefix")
		}
	}
	return nil
}
