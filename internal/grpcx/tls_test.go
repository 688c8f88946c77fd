package grpcx

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

// TestTLS_mutual: a server with a CA serves only clients whose certificate
// the CA signed; plaintext clients, clients without a certificate and
// clients of another CA are refused, and none of them reaches a handler.
func TestTLS_mutual(t *testing.T) {
	set := tlstest.Write(t)
	serverTLS, err := set.Server.Server()
	require.NoError(t, err)
	cfg := DefaultServerConfig()
	cfg.TLS = serverTLS
	lis := listen(t)
	serveOn(t, cfg, lis, time.Second)
	addr := lis.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	call := func(files *tlsx.Files) error {
		opt := WithTLS(nil)
		if files != nil {
			c, err := files.Client()
			require.NoError(t, err)
			opt = WithTLS(c)
		}
		conn, err := Dial(addr, opt)
		require.NoError(t, err)
		defer conn.Close()
		return echo(ctx, conn, "hi")
	}
	require.NoError(t, call(&set.Client), "a client of the CA")
	for name, files := range map[string]*tlsx.Files{
		"plaintext":               nil,
		"no certificate":          {CA: set.Client.CA},
		"another CA's":            {Cert: set.Other.Cert, Key: set.Other.Key, CA: set.Client.CA},
		"not trusting the server": {Cert: set.Client.Cert, Key: set.Client.Key, CA: set.Other.CA},
	} {
		err := call(files)
		require.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", name, err)
	}
}

// TestTLS_serverOnly: without a CA the server asks no client certificate;
// a client verifying the server with the CA gets through.
func TestTLS_serverOnly(t *testing.T) {
	set := tlstest.Write(t)
	serverTLS, err := tlsx.Files{Cert: set.Server.Cert, Key: set.Server.Key}.Server()
	require.NoError(t, err)
	cfg := DefaultServerConfig()
	cfg.TLS = serverTLS
	lis := listen(t)
	serveOn(t, cfg, lis, time.Second)
	clientTLS, err := tlsx.Files{CA: set.Client.CA}.Client()
	require.NoError(t, err)
	conn, err := Dial(lis.Addr().String(), WithTLS(clientTLS))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, echo(ctx, conn, "hi"))

	// DialAny checks each address's certificate against its own host.
	closed := listen(t)
	closedAddr := closed.Addr().String()
	closed.Close()
	anyConn, err := DialAny([]string{closedAddr, lis.Addr().String()}, WithTLS(clientTLS))
	require.NoError(t, err)
	defer anyConn.Close()
	require.NoError(t, echo(ctx, anyConn, "any"))

	pool := NewConnPool(WithTLS(clientTLS))
	defer pool.Close()
	pc, err := pool.Get(lis.Addr().String())
	require.NoError(t, err)
	require.NoError(t, echo(ctx, pc, "pooled"))
}

// TestTLS_reloadedCA: a CA file rewritten and reloaded holds for the
// connections made after it, on both ends: the server takes clients of a
// CA it added, and a client dialling with WithTLSFunc trusts a server of a
// CA it added.
func TestTLS_reloadedCA(t *testing.T) {
	set := tlstest.Write(t)
	dir := t.TempDir()
	serverCA, clientCA := filepath.Join(dir, "server-ca.pem"), filepath.Join(dir, "client-ca.pem")
	tlstest.Concat(t, serverCA, set.Server.CA)
	tlstest.Concat(t, clientCA, set.Other.CA)
	server, err := tlsx.Files{Cert: set.Server.Cert, Key: set.Server.Key, CA: serverCA}.Load()
	require.NoError(t, err)
	serverTLS, err := server.Server()
	require.NoError(t, err)
	cfg := DefaultServerConfig()
	cfg.TLS = serverTLS
	lis := listen(t)
	serveOn(t, cfg, lis, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The client presents a certificate of the other CA and, at first,
	// trusts only the other CA.
	client, err := tlsx.Files{Cert: set.Other.Cert, Key: set.Other.Key, CA: clientCA}.Load()
	require.NoError(t, err)
	call := func() error {
		conn, err := Dial(lis.Addr().String(), WithTLSFunc(client.Client))
		require.NoError(t, err)
		defer conn.Close()
		return echo(ctx, conn, "hi")
	}

	err = call()
	require.Equal(t, codes.Unavailable, status.Code(err), "the client does not trust the server yet: %v", err)
	tlstest.Concat(t, clientCA, set.Other.CA, set.Client.CA)
	require.NoError(t, client.Reload())
	err = call()
	require.Equal(t, codes.Unavailable, status.Code(err), "the server does not take the other CA yet: %v", err)

	tlstest.Concat(t, serverCA, set.Server.CA, set.Other.CA)
	require.NoError(t, server.Reload())
	require.NoError(t, call(), "both CAs reloaded")

	// A CA file that no longer loads keeps the CA in force.
	require.NoError(t, os.WriteFile(serverCA, []byte("not a certificate"), 0o600))
	require.ErrorContains(t, server.Reload(), "-tls-ca: "+serverCA+" holds no PEM certificate")
	require.NoError(t, call(), "a failed reload keeps the CA in force")
}

// TestTLS_acceptPlaintext: with AcceptPlaintext, one port serves TLS
// clients (mutual TLS still checked) and plaintext ones, counting the
// plaintext connections.
func TestTLS_acceptPlaintext(t *testing.T) {
	set := tlstest.Write(t)
	serverTLS, err := set.Server.Server()
	require.NoError(t, err)
	var plain atomic.Int32
	cfg := DefaultServerConfig()
	cfg.TLS, cfg.AcceptPlaintext, cfg.OnPlaintext = serverTLS, true, func() { plain.Add(1) }
	lis := listen(t)
	serveOn(t, cfg, lis, time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call := func(opt grpc.DialOption) error {
		conn, err := Dial(lis.Addr().String(), opt)
		require.NoError(t, err)
		defer conn.Close()
		return echo(ctx, conn, "hi")
	}
	client, err := set.Client.Client()
	require.NoError(t, err)
	require.NoError(t, call(WithTLS(client)), "a TLS client")
	require.Zero(t, plain.Load())
	require.NoError(t, call(WithTLS(nil)), "a plaintext client")
	require.EqualValues(t, 1, plain.Load())
	other, err := set.Other.Client()
	require.NoError(t, err)
	other.RootCAs = client.RootCAs
	require.Equal(t, codes.Unavailable, status.Code(call(WithTLS(other))), "a TLS client of another CA")
}
