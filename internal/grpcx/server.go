package grpcx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/tlsx"
)

// DefaultMaxMessageSize is the largest message a server accepts or sends by
// default. Larger requests fail with RESOURCE_EXHAUSTED.
const DefaultMaxMessageSize = 4 << 20

// ServerConfig holds the transport policy of a gRPC server.
type ServerConfig struct {
	// MaxRecvMessageSize and MaxSendMessageSize bound one message, in bytes.
	MaxRecvMessageSize int
	MaxSendMessageSize int
	// KeepaliveMinTime is the shortest client ping interval the server
	// tolerates; a client pinging faster is disconnected (GOAWAY
	// "too_many_pings").
	KeepaliveMinTime time.Duration
	// KeepaliveTime and KeepaliveTimeout: the server pings an idle client
	// after KeepaliveTime and drops it when no answer came in
	// KeepaliveTimeout.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// MaxConcurrentStreams bounds the streams of one client connection.
	MaxConcurrentStreams uint32
	// Logger receives one record per call (debug level when it succeeded,
	// warn when it failed with a server-side code). Nil discards.
	Logger *slog.Logger
	// Registerer receives the grpc_server_* metrics; nil registers none.
	Registerer prometheus.Registerer
	// TLS, when set, serves TLS only (tlsx.Files.Server); nil serves
	// plaintext.
	TLS *tls.Config
	// AcceptPlaintext, with TLS, also serves connections that do not open
	// with a TLS handshake, in plaintext: a cluster moving to TLS takes
	// both until every client speaks it. OnPlaintext, when set, is called
	// for each such connection.
	AcceptPlaintext bool
	OnPlaintext     func()
	// Authorize, when set, admits or refuses each call before its
	// handler runs (acl.Authorizer.Authorize): it returns the context the
	// handler gets, or the error the call fails with.
	Authorize func(ctx context.Context, method string) (context.Context, error)
	// Audit, when set, says which methods change something worth a log
	// record at info level for every call, with its caller and peer
	// address, whatever its outcome: who did what, and when.
	Audit func(method string) bool
}

// DefaultServerConfig returns the limits every hostscale server starts with.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		MaxRecvMessageSize:   DefaultMaxMessageSize,
		MaxSendMessageSize:   DefaultMaxMessageSize,
		KeepaliveMinTime:     5 * time.Second,
		KeepaliveTime:        30 * time.Second,
		KeepaliveTimeout:     10 * time.Second,
		MaxConcurrentStreams: 1024,
	}
}

// Validate reports the first field that makes the config unusable.
func (c ServerConfig) Validate() error {
	switch {
	case c.MaxRecvMessageSize <= 0:
		return errors.New("grpc server: MaxRecvMessageSize must be positive")
	case c.MaxSendMessageSize <= 0:
		return errors.New("grpc server: MaxSendMessageSize must be positive")
	case c.KeepaliveMinTime <= 0, c.KeepaliveTime <= 0, c.KeepaliveTimeout <= 0:
		return errors.New("grpc server: keepalive durations must be positive")
	}
	return nil
}

// Server is a gRPC server with the health service and reflection registered.
// Register services on Server before Serve; it is safe for concurrent use
// afterwards.
type Server struct {
	*grpc.Server
	// Health is the grpc.health.v1 service; the overall status ("") starts
	// SERVING, components set their own service names.
	Health *health.Server
}

// StreamWindow and ConnWindow are the HTTP/2 flow-control windows, in
// bytes, of every stream and connection of NewServer and Dial. They are
// fixed: gRPC's default windows start at 64 KiB and grow with an estimate of
// the bandwidth-delay product, which sends a PING on the first data of each
// read burst and waits for its acknowledgement. A connection carrying one
// small call at a time never grows its window, so every call cost a PING
// each way. Fixed windows send none, and let a stream move 1 MiB per round
// trip: a snapshot at 2 GB/s across a 0.5 ms network.
const (
	StreamWindow = 1 << 20
	ConnWindow   = 4 << 20
)

// NewServer builds a server with the config's limits and interceptors, the
// grpc.health.v1 service and server reflection.
func NewServer(cfg ServerConfig, extra ...grpc.ServerOption) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m := newServerMetrics(cfg.Registerer)
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvMessageSize),
		grpc.MaxSendMsgSize(cfg.MaxSendMessageSize),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		// Reuse a pool of goroutines for streams instead of one new
		// goroutine per call.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             cfg.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    cfg.KeepaliveTime,
			Timeout: cfg.KeepaliveTimeout,
		}),
		grpc.StaticStreamWindowSize(StreamWindow),
		grpc.StaticConnWindowSize(ConnWindow),
		grpc.ChainUnaryInterceptor(unaryInterceptor(logger, m, cfg.Authorize, cfg.Audit)),
		grpc.ChainStreamInterceptor(streamInterceptor(logger, m, cfg.Authorize, cfg.Audit)),
	}
	if cfg.TLS != nil {
		creds := credentials.NewTLS(cfg.TLS)
		if cfg.AcceptPlaintext {
			creds = sniffingCreds{TransportCredentials: creds, onPlaintext: cfg.OnPlaintext}
		}
		opts = append(opts, grpc.Creds(creds))
	}
	s := grpc.NewServer(append(opts, extra...)...)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return &Server{Server: s, Health: hs}, nil
}

// Serve serves on lis until ctx is cancelled, then stops gracefully, forcing
// the stop after grace. It returns nil after a stop caused by ctx, unless
// handlers outlived the forced stop (see Stop).
func (s *Server) Serve(ctx context.Context, lis net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Server.Serve(lis) }()
	select {
	case err := <-errc:
		if err == nil {
			return nil // Stop or GracefulStop
		}
		return fmt.Errorf("grpc serve %s: %w", lis.Addr(), err)
	case <-ctx.Done():
	}
	s.Health.Shutdown()
	err := Stop(s.Server, grace)
	<-errc
	return err
}

// stopWait bounds the wait, after a forced stop, for handlers that ignore
// the end of their calls' contexts.
var stopWait = 5 * time.Second

// Stop stops s gracefully, and forcibly once grace has passed: that ends
// every call's context. It returns an error, and leaves them behind, when
// handlers still run stopWait after that.
func Stop(s *grpc.Server, grace time.Duration) error {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	}
	s.Stop()
	w := time.NewTimer(stopWait)
	defer w.Stop()
	select {
	case <-done:
		return nil
	case <-w.C:
		return fmt.Errorf("grpc: handlers still running %v after the forced stop; left behind", stopWait)
	}
}

type authorizeFunc = func(ctx context.Context, method string) (context.Context, error)

func unaryInterceptor(logger *slog.Logger, m *serverMetrics, authorize authorizeFunc, audit func(string) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		start := time.Now()
		defer func() {
			if r := recover(); r != nil {
				err = recovered(logger, info.FullMethod, r)
			}
			observe(ctx, logger, m, info.FullMethod, "unary", start, err, audit != nil && audit(info.FullMethod))
		}()
		if authorize != nil {
			if ctx, err = authorize(ctx, info.FullMethod); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

func streamInterceptor(logger *slog.Logger, m *serverMetrics, authorize authorizeFunc, audit func(string) bool) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		start := time.Now()
		ctx := ss.Context()
		defer func() {
			if r := recover(); r != nil {
				err = recovered(logger, info.FullMethod, r)
			}
			observe(ctx, logger, m, info.FullMethod, "stream", start, err, audit != nil && audit(info.FullMethod))
		}()
		if authorize != nil {
			if ctx, err = authorize(ctx, info.FullMethod); err != nil {
				return err
			}
			ss = contextStream{ServerStream: ss, ctx: ctx}
		}
		return handler(srv, ss)
	}
}

// contextStream is a stream whose handler sees ctx.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s contextStream) Context() context.Context { return s.ctx }

type callerKey struct{}

// WithCaller returns ctx naming the caller of the call it serves (an ACL
// token's name), which the call's log record then carries.
func WithCaller(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, callerKey{}, name)
}

// Caller returns the name WithCaller gave ctx, or "".
func Caller(ctx context.Context) string {
	s, _ := ctx.Value(callerKey{}).(string)
	return s
}

func recovered(logger *slog.Logger, method string, r any) error {
	logger.Error("grpc handler panic", "method", method, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return status.Errorf(codes.Internal, "internal error in %s", method)
}

func observe(ctx context.Context, logger *slog.Logger, m *serverMetrics, method, kind string, start time.Time, err error, audited bool) {
	code := status.Code(err)
	elapsed := time.Since(start)
	m.observe(method, code, elapsed)
	level := slog.LevelDebug
	switch {
	case serverFault(code):
		level = slog.LevelWarn
	case code == codes.Unauthenticated || code == codes.PermissionDenied:
		// Refusals are worth a line each: a client with a wrong token,
		// or someone trying tokens.
		level = slog.LevelInfo
	case audited:
		level = slog.LevelInfo
	}
	if !logger.Enabled(ctx, level) {
		return
	}
	attrs := []slog.Attr{
		slog.String("method", method),
		slog.String("kind", kind),
		slog.String("code", code.String()),
		slog.Duration("elapsed", elapsed),
	}
	if c := Caller(ctx); c != "" {
		attrs = append(attrs, slog.String("caller", c))
	}
	if audited {
		attrs = append(attrs, slog.Bool("audit", true))
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			attrs = append(attrs, slog.String("peer", p.Addr.String()))
		}
	}
	if err != nil {
		attrs = append(attrs, slog.String("err", status.Convert(err).Message()))
	}
	logger.LogAttrs(ctx, level, "grpc call", attrs...)
}

// serverFault reports codes that point at the server rather than the caller.
func serverFault(c codes.Code) bool {
	switch c {
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unimplemented:
		return true
	}
	return false
}

// sniffingCreds serve TLS to connections that open with a TLS handshake
// and plaintext to the others (ServerConfig.AcceptPlaintext).
type sniffingCreds struct {
	credentials.TransportCredentials
	onPlaintext func()
}

func (c sniffingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// gRPC bounds the handshake, this first read included, with its
	// connection timeout.
	conn, isTLS, err := tlsx.Sniff(conn)
	if err != nil {
		return nil, nil, err
	}
	if isTLS {
		return c.TransportCredentials.ServerHandshake(conn)
	}
	if c.onPlaintext != nil {
		c.onPlaintext()
	}
	return conn, plaintextInfo{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (c sniffingCreds) Clone() credentials.TransportCredentials {
	return sniffingCreds{TransportCredentials: c.TransportCredentials.Clone(), onPlaintext: c.onPlaintext}
}

// plaintextInfo describes a connection sniffingCreds served in plaintext.
type plaintextInfo struct{ credentials.CommonAuthInfo }

func (plaintextInfo) AuthType() string { return "insecure" }
