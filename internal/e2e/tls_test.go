package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/testcluster"
	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestTLS_everyBinary: three controllers serve their API over mutual TLS;
// an agent and a balancer with client certificates of the same CA run and
// route a pool; the controllers replicate and forward over TLS on their
// Raft ports too; a write through a follower reaches the leader; the CLI
// works with the CA and a certificate (flags or environment) and is
// refused without them, as is a plaintext client; a new certificate and a
// SIGHUP rotate a controller's without a restart; with -http-tls verify,
// /metrics is HTTPS for clients of the CA only; a bad -tls-cert or
// -http-tls stops every binary with exit code 2, naming the flag.
func TestTLS_everyBinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	set := tlstest.Write(t)
	// The controllers' certificate, in files of its own, for rotation.
	certDir := t.TempDir()
	serverCert, serverKey := filepath.Join(certDir, "c.pem"), filepath.Join(certDir, "c-key.pem")
	install := func(cert, key string) {
		tlstest.Concat(t, serverCert, cert)
		tlstest.Concat(t, serverKey, key)
	}
	install(set.Server.Cert, set.Server.Key)
	clientTLS, err := set.Client.Client()
	require.NoError(t, err)
	clientArgs := []string{"-tls-ca", set.Client.CA, "-tls-cert", set.Client.Cert, "-tls-key", set.Client.Key}
	f := newFleetClients(t, ctx, 1, nil, func(o *testcluster.Options) {
		o.Args = append(o.Args, "-tls-cert", serverCert, "-tls-key", serverKey, "-tls-ca", set.Server.CA, "-http-tls", "verify")
		o.ClientTLS = clientTLS
	}, clientArgs)
	f.createPool("web", 2, nil)
	f.waitRouted(f.settled("web", 2, 30*time.Second), 10*time.Second)
	resp, err := http.Get("http://" + f.lbAddr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	_, err = followerOf(f.cl, f.leader()).Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 3})
	require.NoError(t, err, "a write through a follower")
	f.settled("web", 3, 30*time.Second)

	cli := func(env []string, args ...string) (string, int) {
		cmd := exec.CommandContext(ctx, filepath.Join(f.bin, "hostscale"), append([]string{"-addr", f.controllers, "-retry", "0", "-timeout", "10s"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return string(out), exit.ExitCode()
		}
		require.NoError(t, err)
		return string(out), 0
	}
	out, code := cli(nil, append(clientArgs, "instances", "web")...)
	require.Zero(t, code, out)
	require.Contains(t, out, "web-3")
	out, code = cli([]string{"HOSTSCALE_CACERT=" + set.Client.CA, "HOSTSCALE_CLIENT_CERT=" + set.Client.Cert, "HOSTSCALE_CLIENT_KEY=" + set.Client.Key}, "status")
	require.Zero(t, code, out)
	require.Contains(t, out, "leader")
	out, code = cli(nil, "status")
	require.Equal(t, 1, code, out)
	require.Contains(t, out, "Unavailable")
	out, code = cli(nil, "-tls-ca", set.Client.CA, "status")
	require.Equal(t, 1, code, "without a client certificate: %s", out)
	out, code = cli(nil, "-tls-ca", set.Client.CA, "-tls-cert", set.Client.Cert, "status")
	require.Equal(t, 2, code, out)
	require.Contains(t, out, "-tls-key: needed with -tls-cert")

	plain, err := grpcx.Dial(f.leader().GRPCAddr)
	require.NoError(t, err)
	defer plain.Close()
	_, err = pb.NewPoolServiceClient(plain).ListPools(ctx, &pb.ListPoolsRequest{})
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)

	// The Raft port speaks TLS too: a plaintext peer gets nothing.
	raw, err := net.DialTimeout("tcp", f.leader().RaftAddr, 5*time.Second)
	require.NoError(t, err)
	defer raw.Close()
	_, _ = raw.Write([]byte{0xF5, 'h', 's', 'f', 1}) // a forwarding preamble
	_ = raw.SetReadDeadline(time.Now().Add(15 * time.Second))
	n, err := raw.Read(make([]byte, 1))
	require.Error(t, err, "read %d bytes from the Raft port in plaintext", n)

	// Rotation: a new certificate in the files and a SIGHUP, and the
	// leader's next handshakes present it; the cluster goes on.
	served := func() []string {
		c, err := tls.Dial("tcp", f.leader().GRPCAddr, clientTLS)
		require.NoError(t, err)
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].DNSNames
	}
	require.NotContains(t, served(), "rotated.example")
	install(set.Issue(t, "rotated", "127.0.0.1", "::1", "localhost", "rotated.example"))
	leader := f.leader()
	leader.Signal(syscall.SIGHUP)
	require.Eventually(t, func() bool { return slices.Contains(served(), "rotated.example") }, 10*time.Second, 20*time.Millisecond)
	require.Contains(t, leader.Log(), "TLS files reloaded")
	// -http-tls verify: /metrics over HTTPS, for clients of the CA only.
	scraper := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS}, Timeout: 10 * time.Second}
	metrics, err := scraper.Get("https://" + leader.HTTPAddr + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(metrics.Body)
	metrics.Body.Close()
	require.Contains(t, string(body), `hostscale_tls_certificate_not_after_timestamp_seconds{cert="`+serverCert+`"}`)
	noCert := clientTLS.Clone()
	noCert.GetClientCertificate = nil
	_, err = (&http.Client{Transport: &http.Transport{TLSClientConfig: noCert}, Timeout: 10 * time.Second}).Get("https://" + leader.HTTPAddr + "/metrics")
	require.Error(t, err, "/metrics without a client certificate")
	plainMetrics, err := http.Get("http://" + leader.HTTPAddr + "/metrics")
	require.NoError(t, err)
	plainMetrics.Body.Close()
	require.Equal(t, http.StatusBadRequest, plainMetrics.StatusCode, "/metrics in plaintext")
	_, err = f.leader().Pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 2})
	require.NoError(t, err, "a write after the rotation")
	f.settled("web", 2, 30*time.Second)

	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, bin := range []string{"hostscale-controller", "hostscale-agent", "hostscale-balancer"} {
		args := []string{"-tls-cert", missing, "-tls-key", set.Client.Key, "-tls-ca", set.Client.CA}
		switch bin {
		case "hostscale-controller":
			args = append(args, "-id", "c9", "-data-dir", t.TempDir())
		case "hostscale-agent":
			args = append(args, "-data-dir", t.TempDir())
		case "hostscale-balancer":
			args = append(args, "-controllers", f.controllers)
		}
		out, err := exec.CommandContext(ctx, filepath.Join(f.bin, bin), args...).CombinedOutput()
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, "%s: %s", bin, out)
		require.Equal(t, 2, exit.ExitCode(), "%s: %s", bin, out)
		require.Contains(t, string(out), "-tls-cert: stat "+missing, bin)

		args = append(args[:0:0], args[6:]...)
		for _, c := range []struct {
			flags []string
			want  string
		}{
			{[]string{"-http-tls", "yes"}, `-http-tls: "yes": expected off, on or verify`},
			{[]string{"-http-tls", "on"}, "-http-tls on: needs -tls-cert and -tls-key"},
		} {
			out, err = exec.CommandContext(ctx, filepath.Join(f.bin, bin), append(c.flags, args...)...).CombinedOutput()
			require.ErrorAs(t, err, &exit, "%s %v: %s", bin, c.flags, out)
			require.Equal(t, 2, exit.ExitCode(), "%s %v: %s", bin, c.flags, out)
			require.Contains(t, string(out), c.want, bin)
		}
	}
}

// TestTLS_caRotation: three controllers move from one CA to another
// without a restart, as an operator rotates a CA: the CA file gets the new
// CA beside the old and every controller a SIGHUP; then each gets a
// certificate of the new CA and a SIGHUP; then the CA file drops the old
// CA and a last SIGHUP. Writes go through a follower (forwarded over the
// Raft port) at every step. At the end a certificate of the old CA is
// refused by every controller, and a controller restarted with the new
// CA alone rejoins: the others check its certificate, and it theirs,
// against the CA they reloaded.
func TestTLS_caRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	oldCA, newCA := tlstest.Write(t), tlstest.Write(t)
	dir := t.TempDir()
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "c.pem"), filepath.Join(dir, "c-key.pem")
	tlstest.Concat(t, caFile, oldCA.Server.CA)
	tlstest.Concat(t, certFile, oldCA.Server.Cert)
	tlstest.Concat(t, keyFile, oldCA.Server.Key)

	// The harness trusts both CAs and presents the certificate of the
	// step it is at.
	roots := x509.NewCertPool()
	for _, f := range []string{oldCA.Client.CA, newCA.Client.CA} {
		pem, err := os.ReadFile(f)
		require.NoError(t, err)
		require.True(t, roots.AppendCertsFromPEM(pem))
	}
	pair := func(files tlsx.Files) *tls.Certificate {
		c, err := tls.LoadX509KeyPair(files.Cert, files.Key)
		require.NoError(t, err)
		return &c
	}
	var presented atomic.Pointer[tls.Certificate]
	presented.Store(pair(oldCA.Client))
	clientTLS := &tls.Config{RootCAs: roots, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return presented.Load(), nil
	}}
	cl, _ := testcluster.StartLed(ctx, t, testcluster.Options{
		Launcher:  testcluster.BinaryLauncher{Path: filepath.Join(binaries(t), "hostscale-controller")},
		Args:      []string{"-tls-cert", certFile, "-tls-key", keyFile, "-tls-ca", caFile},
		ClientTLS: clientTLS,
	}, 30*time.Second)

	reloads := 0
	hup := func() {
		t.Helper()
		reloads++
		for _, n := range cl.Nodes() {
			n.Signal(syscall.SIGHUP)
		}
		for _, n := range cl.Nodes() {
			require.Eventually(t, func() bool { return strings.Count(n.Log(), "TLS files reloaded") >= reloads },
				10*time.Second, 20*time.Millisecond, "%s reload %d", n.ID, reloads)
		}
	}
	write := func(name string) {
		t.Helper()
		require.NoError(t, writeThroughFollower(ctx, t, cl, name), "write %s", name)
	}
	write("before")

	tlstest.Concat(t, caFile, oldCA.Server.CA, newCA.Server.CA)
	hup()
	write("both-cas")
	tlstest.Concat(t, certFile, newCA.Server.Cert)
	tlstest.Concat(t, keyFile, newCA.Server.Key)
	hup()
	presented.Store(pair(newCA.Client))
	write("new-certificates")
	tlstest.Concat(t, caFile, newCA.Server.CA)
	hup()
	write("new-ca-only")

	for _, n := range cl.Nodes() {
		oldClient := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{*pair(oldCA.Client)}}
		conn, err := grpcx.Dial(n.GRPCAddr, grpcx.WithTLS(oldClient))
		require.NoError(t, err)
		_, err = pb.NewPoolServiceClient(conn).ListPools(ctx, &pb.ListPoolsRequest{})
		conn.Close()
		require.Equal(t, codes.Unavailable, status.Code(err), "%s takes a certificate of the old CA: %v", n.ID, err)
	}

	restarted := ledFollower(t, ctx, cl)
	restarted.Stop()
	restarted.Restart()
	_, _, err := cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err, "the restarted controller rejoins")
	write("after-restart")
	require.NoError(t, testcluster.Eventually(ctx, 30*time.Second, func(ctx context.Context) error {
		_, err := restarted.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "after-restart"})
		return err
	}), "the restarted controller catches up")
}

// TestTLS_movingARunningClusterToTLS: three plaintext controllers move to
// mutual TLS one restart at a time, committing writes through a follower
// after each: first each offers TLS and still takes and speaks plaintext
// (-tls-accept-plaintext -tls-dial-plaintext); then each speaks TLS to the
// others, and the clients move to TLS; then each takes TLS only. The
// plaintext connections each took are counted on /metrics; at the end a
// plaintext client is refused by every controller, and every write is on
// every controller.
func TestTLS_movingARunningClusterToTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	set := tlstest.Write(t)
	cl, _ := testcluster.StartLed(ctx, t, testcluster.Options{
		Launcher: testcluster.BinaryLauncher{Path: filepath.Join(binaries(t), "hostscale-controller")},
	}, 30*time.Second)
	tlsArgs := []string{"-tls-cert", set.Server.Cert, "-tls-key", set.Server.Key, "-tls-ca", set.Server.CA}
	var written []string
	write := func(step string) {
		t.Helper()
		name := fmt.Sprintf("step-%d", len(written)+1)
		require.NoError(t, writeThroughFollower(ctx, t, cl, name), "write %s (%s)", name, step)
		written = append(written, name)
	}
	restartEach := func(step string, args ...string) {
		t.Helper()
		for _, n := range cl.Nodes() {
			n.Stop()
			n.RestartWith(args...)
			_, _, err := cl.WaitLeader(ctx, 30*time.Second)
			require.NoError(t, err, "%s restarted to %s", n.ID, step)
			write(step + ", " + n.ID + " restarted")
		}
	}
	write("plaintext")

	restartEach("offer TLS", append(slices.Clone(tlsArgs), "-tls-accept-plaintext", "-tls-dial-plaintext")...)
	for _, n := range cl.Nodes() {
		body := httpGet(t, "http://"+n.HTTPAddr+"/metrics")
		for _, port := range []string{"grpc", "raft"} {
			require.Regexp(t, `hostscale_controller_plaintext_connections_total\{port="`+port+`"\} [1-9]`, body, "%s took no plaintext on %s", n.ID, port)
		}
	}
	restartEach("speak TLS", append(slices.Clone(tlsArgs), "-tls-accept-plaintext")...)
	clientTLS, err := set.Client.Client()
	require.NoError(t, err)
	cl.SetClientTLS(clientTLS)
	write("clients on TLS")
	restartEach("TLS only", tlsArgs...)

	for _, n := range cl.Nodes() {
		plain, err := grpcx.Dial(n.GRPCAddr)
		require.NoError(t, err)
		_, err = pb.NewPoolServiceClient(plain).ListPools(ctx, &pb.ListPoolsRequest{})
		plain.Close()
		require.Equal(t, codes.Unavailable, status.Code(err), "%s takes plaintext: %v", n.ID, err)
		require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			r, err := n.Pools().ListPools(ctx, &pb.ListPoolsRequest{})
			if err != nil {
				return err
			}
			var have []string
			for _, p := range r.Pools {
				have = append(have, p.Name)
			}
			for _, w := range written {
				if !slices.Contains(have, w) {
					return fmt.Errorf("%s lacks %s: has %v", n.ID, w, have)
				}
			}
			return nil
		}))
	}
}

// followerOf returns a running node of cl other than leader, or nil.
func followerOf(cl *testcluster.Cluster, leader *testcluster.Node) *testcluster.Node {
	for _, n := range cl.Running() {
		if n != leader {
			return n
		}
	}
	return nil
}

// writeThroughFollower creates a pool named name (nothing to run) through a
// follower of cl's leader: a write forwarded over the Raft port.
func writeThroughFollower(ctx context.Context, t *testing.T, cl *testcluster.Cluster, name string) error {
	t.Helper()
	_, err := ledFollower(t, ctx, cl).Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{
		Name: name, PathPrefix: "/" + name,
		Template: &pb.InstanceTemplate{Command: "/bin/true", HealthPath: "/healthz"},
		Selector: "tier=web", Max: 1,
	}})
	return err
}

// ledFollower waits until cl has a leader and returns a follower of it.
func ledFollower(t *testing.T, ctx context.Context, cl *testcluster.Cluster) *testcluster.Node {
	t.Helper()
	leader, _, err := cl.WaitLeader(ctx, 30*time.Second)
	require.NoError(t, err)
	f := followerOf(cl, leader)
	require.NotNil(t, f, "no follower")
	return f
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

// TestSIGHUP_neverStopsABinary: a SIGHUP, as a log rotation's postrotate
// sends to every daemon, reaches the controllers, an agent and a balancer
// that have nothing to reload; each logs it and goes on serving.
func TestSIGHUP_neverStopsABinary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFleet(t, ctx, 1)
	f.createPool("web", 1, nil)
	f.waitRouted(f.settled("web", 1, 30*time.Second), 10*time.Second)
	var agent *agentProc
	for _, a := range f.agents {
		agent = a
	}
	for _, n := range f.cl.Nodes() {
		n.Signal(syscall.SIGHUP)
	}
	require.NoError(t, agent.cmd.Process.Signal(syscall.SIGHUP))
	require.NoError(t, f.balancer.cmd.Process.Signal(syscall.SIGHUP))
	const logged = "SIGHUP: nothing to reload"
	for _, n := range f.cl.Nodes() {
		require.Eventually(t, func() bool { return strings.Contains(n.Log(), logged) }, 10*time.Second, 20*time.Millisecond, n.ID)
		require.True(t, n.Running(), "%s stopped on SIGHUP", n.ID)
	}
	for _, p := range []*proc{agent.proc, f.balancer} {
		require.Eventually(t, func() bool { return strings.Contains(p.log(), logged) }, 10*time.Second, 20*time.Millisecond, p.name)
		select {
		case <-p.done:
			t.Fatalf("%s stopped on SIGHUP: %s", p.name, tail(p.log(), 20))
		default:
		}
	}
	_, _, err := f.cl.WaitLeader(ctx, 10*time.Second)
	require.NoError(t, err)
	resp, err := http.Get("http://" + f.lbAddr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	_, err = f.pools().ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 2})
	require.NoError(t, err)
	f.settled("web", 2, 30*time.Second)
}
