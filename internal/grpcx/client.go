package grpcx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Dial returns a client connection to addr (host:port) with the message
// limits and keepalive pings that match NewServer's policy. The connection
// is lazy: it connects on the first call and reconnects on its own.
func Dial(addr string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, append(dialOptions(), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("grpc dial %s: %w", addr, err)
	}
	return conn, nil
}

// DialAny is Dial for several addresses of one service, such as the
// controllers of a cluster: the connection goes to the first of addrs, in
// order, that accepts it, and when that one goes away, to the first that
// accepts again. Every address must be host:port.
func DialAny(addrs []string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("grpc dial: no address")
	}
	state := resolver.State{}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || port == "" {
			return nil, fmt.Errorf("grpc dial: %q is not host:port", a)
		}
		// With TLS, each controller's certificate is checked against the
		// host it is dialled at, as with Dial, not the target's name.
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a, ServerName: host})
	}
	if len(addrs) == 1 {
		return Dial(addrs[0], extra...)
	}
	r := manual.NewBuilderWithScheme("hostscale-any")
	r.InitialState(state)
	conn, err := grpc.NewClient(r.Scheme()+":///controllers", append(append(dialOptions(), grpc.WithResolvers(r)), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("grpc dial %v: %w", addrs, err)
	}
	return conn, nil
}

// WithTLS makes a connection speak TLS with cfg (tlsx.Files.Client); a
// nil cfg leaves it plaintext. Pass it after Dial's address.
func WithTLS(cfg *tls.Config) grpc.DialOption {
	if cfg == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

// WithTLSFunc makes a connection speak TLS with the configuration cfg
// returns at each handshake (tlsx.Identity.Client), so that a CA reloaded
// on SIGHUP holds for the connections made after it; a nil cfg leaves it
// plaintext. Pass it after Dial's address.
func WithTLSFunc(cfg func() *tls.Config) grpc.DialOption {
	if cfg == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	return grpc.WithTransportCredentials(reloadingCreds{cfg: cfg, TransportCredentials: credentials.NewTLS(cfg())})
}

// reloadingCreds are TLS credentials whose handshakes each take a fresh
// configuration from cfg; the embedded credentials answer Info.
type reloadingCreds struct {
	credentials.TransportCredentials
	cfg func() *tls.Config
}

func (c reloadingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.cfg()).ClientHandshake(ctx, authority, conn)
}

func (c reloadingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(c.cfg()).ServerHandshake(conn)
}

func (c reloadingCreds) Clone() credentials.TransportCredentials {
	return reloadingCreds{cfg: c.cfg, TransportCredentials: c.TransportCredentials.Clone()}
}

// dialOptions are the options of every client connection.
func dialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(DefaultMaxMessageSize),
			grpc.MaxCallSendMsgSize(DefaultMaxMessageSize),
		),
		// A peer that vanished without closing the connection (a pulled
		// cable, a host cut off) is noticed within 15 s: a ping after
		// 10 s without a read, 5 s for its answer; gRPC also sets
		// TCP_USER_TIMEOUT to the 5 s, so data unacknowledged that long
		// ends the connection. Servers accept pings every 5 s.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                10 * time.Second,
			Timeout:             5 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithStaticStreamWindowSize(StreamWindow),
		grpc.WithStaticConnWindowSize(ConnWindow),
	}
}
