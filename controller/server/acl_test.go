package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/controller/server/servertest"
	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/testcluster"
	peerv1 "github.com/hostscale/hostscale/proto/hostscale/peer/v1"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// TestACLRules_coverEveryMethod: every method of the API and of the peer
// service has a rule, and every rule names a method that exists.
func TestACLRules_coverEveryMethod(t *testing.T) {
	_ = pb.File_hostscale_v1_cluster_proto
	_ = peerv1.File_hostscale_peer_v1_peer_proto
	var methods []string
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if pkg := string(fd.Package()); pkg != "hostscale.v1" && pkg != "hostscale.peer.v1" {
			return true
		}
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				methods = append(methods, fmt.Sprintf("/%s/%s", sd.FullName(), sd.Methods().Get(j).Name()))
			}
		}
		return true
	})
	_ = pb.File_hostscale_v1_token_proto
	require.Greater(t, len(methods), 30, "the API's services are linked in")
	require.Empty(t, server.ACLRules.Missing(methods), "methods without an ACL rule")
	for m := range server.ACLRules {
		require.True(t, slices.Contains(methods, m), "rule for %s, which no service has", m)
	}
}

type aclFixture struct {
	dir                                  string
	acl, own                             string
	opsToken, writeToken, readToken, ctl string
	shopToken                            string
}

func newACLFixture(t *testing.T) aclFixture {
	f := aclFixture{dir: t.TempDir(), opsToken: "ops-token-0123456789", writeToken: "deploy-token-0123456789",
		readToken: "grafana-token-0123456789", ctl: "controllers-0123456789", shopToken: "shop-token-0123456789"}
	f.acl = filepath.Join(f.dir, "acl")
	require.NoError(t, os.WriteFile(f.acl, []byte(fmt.Sprintf(`ops operator %s
deploy write %s
grafana read %s
controllers operator %s
shop write %s pools=shop-*,blog
`, f.opsToken, f.writeToken, acl.Hash(f.readToken), f.ctl, f.shopToken)), 0o600))
	f.own = filepath.Join(f.dir, "token")
	require.NoError(t, os.WriteFile(f.own, []byte(f.ctl+"\n"), 0o600))
	return f
}

func (f aclFixture) configure(t *testing.T) func(*server.Config) {
	return func(cfg *server.Config) {
		var err error
		cfg.ACL, err = acl.OpenFile(f.acl)
		require.NoError(t, err)
		cfg.Token, err = acl.ReadTokenFile(f.own)
		require.NoError(t, err)
		cfg.ServerStabilization = time.Second
		cfg.TokenReapAfter = time.Second
	}
}

// start starts three controllers with the fixture's ACL file, which the
// harness calls with the operator token.
func (f aclFixture) start(t *testing.T) *testcluster.Cluster {
	return testcluster.Start(t, testcluster.Options{
		Nodes:            3,
		Launcher:         servertest.Launcher{Configure: f.configure(t)},
		HeartbeatTimeout: 500 * time.Millisecond,
		ElectionTimeout:  500 * time.Millisecond,
		ClientToken:      f.opsToken,
	})
}

func dialToken(t *testing.T, addr, token string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcx.Dial(addr, grpc.WithPerRPCCredentials(acl.Credentials(func() string { return token })))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestACL_clusterAdmitsByRole: three controllers with an ACL file. A write
// token's write through a follower is forwarded and lands; a read token
// reads but cannot write, on the leader or a follower; a call without a
// token or with an unknown one is refused; the controllers' own token
// carries their calls to each other, so a removed member added back is
// promoted; none of the refusals changes anything.
func TestACL_clusterAdmitsByRole(t *testing.T) {
	f := newACLFixture(t)
	c := f.start(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	fol := follower(c, leader)

	deploy := pb.NewPoolServiceClient(dialToken(t, fol.GRPCAddr, f.writeToken))
	created, err := retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return deploy.CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("web", "127.0.0.1:9001")})
	})
	require.NoError(t, err, "a write token's write through a follower")

	for _, n := range []*testcluster.Node{leader, fol} {
		grafana := pb.NewPoolServiceClient(dialToken(t, n.GRPCAddr, f.readToken))
		got, err := grafana.GetPool(ctx, &pb.GetPoolRequest{Pool: "web", Consistent: true})
		require.NoError(t, err, n.ID)
		require.GreaterOrEqual(t, got.Index, created.Index)
		_, err = grafana.ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 3})
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%s: %v", n.ID, err)
		require.Contains(t, err.Error(), `token "grafana" (roles read) may not call /hostscale.v1.PoolService/ScalePool: it needs the write role`)

		_, err = pb.NewClusterServiceClient(dialToken(t, n.GRPCAddr, f.writeToken)).TransferLeadership(ctx, &pb.TransferLeadershipRequest{})
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%s: %v", n.ID, err)

		_, err = pb.NewPoolServiceClient(dialToken(t, n.GRPCAddr, "")).ListPools(ctx, &pb.ListPoolsRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%s: %v", n.ID, err)
		_, err = pb.NewPoolServiceClient(dialToken(t, n.GRPCAddr, "someone-elses-token-0123")).ListPools(ctx, &pb.ListPoolsRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%s: %v", n.ID, err)

		// An agent's stream needs the agent role.
		stream, err := pb.NewAgentServiceClient(dialToken(t, n.GRPCAddr, f.opsToken)).Connect(ctx)
		require.NoError(t, err)
		_, err = stream.Recv()
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%s: %v", n.ID, err)
	}
	got, err := leader.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web", Consistent: true})
	require.NoError(t, err)
	require.Zero(t, got.Pool.Desired, "a refused write changed nothing")

	// Writes, refused ones included, are audited by the controller that
	// took them; reads are not.
	require.Regexp(t, `level=INFO msg="grpc call"[^\n]* method=/hostscale.v1.PoolService/CreatePool kind=unary code=OK [^\n]*caller=deploy audit=true peer=127\.0\.0\.1:\d+`, fol.Log())
	require.Regexp(t, `msg="grpc call"[^\n]* method=/hostscale.v1.PoolService/ScalePool kind=unary code=PermissionDenied [^\n]*caller=grafana audit=true`, leader.Log())
	require.NotRegexp(t, `method=/hostscale.v1.PoolService/GetPool [^\n]*audit=true`, fol.Log()+leader.Log())

	// /metrics wants a read token; /healthz and /readyz stay open.
	get := func(path, token string) (int, string) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+leader.HTTPAddr+path, nil)
		require.NoError(t, err)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	code, body := get("/metrics", "")
	require.Equal(t, http.StatusUnauthorized, code, body)
	code, body = get("/metrics", "someone-elses-token-0123")
	require.Equal(t, http.StatusUnauthorized, code, body)
	code, body = get("/metrics", f.readToken)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, "hostscale_controller_acl_tokens 5")
	require.Contains(t, body, `grpc_server_handled_total{grpc_code="PermissionDenied",grpc_method="/hostscale.v1.PoolService/ScalePool"}`)
	for _, path := range []string{"/healthz", "/readyz"} {
		code, body = get(path, "")
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}

	// The controllers call each other with their own token: a removed
	// member added back is checked by the leader and promoted.
	_, err = leader.Cluster().RemoveMember(ctx, &pb.RemoveMemberRequest{Id: fol.ID})
	require.NoError(t, err)
	fol.Stop()
	require.NoError(t, os.RemoveAll(fol.DataDir))
	fol.Restart()
	_, err = retry(ctx, func(ctx context.Context) (*pb.AddMemberResponse, error) {
		return leader.Cluster().AddMember(ctx, &pb.AddMemberRequest{Id: fol.ID, RaftAddress: fol.RaftAddr, ApiAddress: fol.GRPCAddr})
	})
	require.NoError(t, err)
	waitVoter(ctx, t, leader, fol.ID, 20*time.Second)
}

// TestACL_raftPortWantsAControllersToken: with ACLs, a controller's Raft
// port takes only connections that present a token with the operator
// role, as the controllers' own: Raft's RPCs and forwarded calls from
// anything else, with no token, another role's or an unknown one, are
// refused before they reach Raft or the forwarding, counted and logged;
// the controllers still replicate and forward over it.
func TestACL_raftPortWantsAControllersToken(t *testing.T) {
	f := newACLFixture(t)
	c := f.start(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)

	_, err := raftnode.DialForward(ctx, leader.RaftAddr, 5*time.Second)
	require.ErrorIs(t, err, raftnode.ErrForwardUnsupported, "a forwarding connection without a token")
	for _, tok := range []string{f.readToken, f.writeToken, f.shopToken, "someone-elses-token-0123"} {
		_, err := raftnode.DialForwardAs(ctx, leader.RaftAddr, 5*time.Second, raftnode.PeerAuth{Token: tok})
		require.ErrorIs(t, err, raftnode.ErrTokenRefused)
	}
	// Raft's AppendEntries without a token: closed unread.
	require.NoError(t, testcluster.RaftPortRefusesTokenless(leader.RaftAddr, 15*time.Second))

	for _, tok := range []string{f.ctl, f.opsToken} {
		conn, err := raftnode.DialForwardAs(ctx, leader.RaftAddr, 5*time.Second, raftnode.PeerAuth{Token: tok})
		require.NoError(t, err, "an operator token")
		conn.Close()
	}

	// The controllers forward over the Raft port with their own token.
	fol := follower(c, leader)
	deploy := pb.NewPoolServiceClient(dialToken(t, fol.GRPCAddr, f.writeToken))
	_, err = retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
		return deploy.CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("web", "127.0.0.1:9001")})
	})
	require.NoError(t, err)
	metrics := func(n *testcluster.Node) string {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTPAddr+"/metrics", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+f.readToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(body)
	}
	body := metrics(fol)
	require.Regexp(t, `hostscale_controller_forwarded_total\{grpc_method="/hostscale.v1.PoolService/CreatePool",transport="raft"\} [1-9]`, body)
	require.NotContains(t, body, `transport="api"`)
	require.Contains(t, metrics(leader), "hostscale_controller_raft_refused_connections_total 6\n")
	require.Contains(t, leader.Log(), "raft port: refused a connection without a controller's token")
	for _, n := range c.Running() {
		require.Contains(t, metrics(n), "hostscale_controller_raft_refused_connections_total", n.ID)
	}
}

// TestACL_aControllerNeedsAnOperatorTokenOfItsOwn: -acl-file without a
// token of the controller's own, or with one the file does not grant the
// operator role, is refused before the controller starts.
func TestACL_aControllerNeedsAnOperatorTokenOfItsOwn(t *testing.T) {
	f := newACLFixture(t)
	file, err := acl.OpenFile(f.acl)
	require.NoError(t, err)
	require.ErrorContains(t, server.CheckACL(file, nil), "-acl-file: needs -token-file")
	for token, want := range map[string]string{
		f.readToken:              `-token-file: token "grafana" of -acl-file ` + f.acl + ` has roles read; a controller's own token needs operator`,
		"not-in-the-file-012345": "holds no token of -acl-file",
	} {
		p := filepath.Join(t.TempDir(), "token")
		require.NoError(t, os.WriteFile(p, []byte(token), 0o600))
		own, err := acl.ReadTokenFile(p)
		require.NoError(t, err)
		err = server.CheckACL(file, own)
		require.Error(t, err)
		require.True(t, strings.Contains(err.Error(), want), err.Error())
	}
	own, err := acl.ReadTokenFile(f.own)
	require.NoError(t, err)
	require.NoError(t, server.CheckACL(file, own))
	require.NoError(t, server.CheckACL(nil, nil), "no ACLs")
}

// TestACL_replicatedTokens: an operator creates a token through a
// follower; every controller admits it, with its roles, and the list
// names who created it; deleted, every controller refuses it. Bad
// requests name the field and change nothing.
func TestACL_replicatedTokens(t *testing.T) {
	f := newACLFixture(t)
	c := f.start(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	fol := follower(c, leader)
	const ciSecret = "ci-secret-0123456789abcdef"
	ops := pb.NewTokenServiceClient(dialToken(t, fol.GRPCAddr, f.opsToken))
	created, err := retry(ctx, func(ctx context.Context) (*pb.CreateTokenResponse, error) {
		return ops.CreateToken(ctx, &pb.CreateTokenRequest{Token: &pb.Token{Name: "ci", Roles: []string{"write"}, Description: "the deploy pipeline"}, Secret: ciSecret})
	})
	require.NoError(t, err)
	require.Equal(t, strings.TrimPrefix(acl.Hash(ciSecret), acl.HashPrefix), created.Token.SecretSha256)
	require.Equal(t, "ops", created.Token.CreatedBy, "the caller that created it, named by the follower that took the call")
	require.NotNil(t, created.Token.CreateTime)

	admitted := func(n *testcluster.Node, secret string) error {
		_, err := pb.NewPoolServiceClient(dialToken(t, n.GRPCAddr, secret)).CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("p-" + n.ID)})
		if status.Code(err) == codes.AlreadyExists {
			return nil
		}
		return err
	}
	for _, n := range c.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error { return admitted(n, ciSecret) }), n.ID)
		_, err := pb.NewTokenServiceClient(dialToken(t, n.GRPCAddr, ciSecret)).ListTokens(ctx, &pb.ListTokensRequest{})
		require.Equal(t, codes.PermissionDenied, status.Code(err), "a write token does not manage tokens: %v", err)
	}
	list, err := ops.ListTokens(ctx, &pb.ListTokensRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, list.Tokens, 1)
	require.Equal(t, "ci", list.Tokens[0].Name)
	require.Equal(t, []string{"write"}, list.Tokens[0].Roles)

	digest := strings.TrimPrefix(acl.Hash("another-secret-0123456789"), acl.HashPrefix)
	for _, tc := range []struct {
		req  *pb.CreateTokenRequest
		code codes.Code
		want string
	}{
		{&pb.CreateTokenRequest{}, codes.InvalidArgument, "token: must be set"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Roles: []string{"read"}, SecretSha256: digest}}, codes.InvalidArgument, "token.name"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "Bad Name", Roles: []string{"read"}, SecretSha256: digest}}, codes.InvalidArgument, "token.name"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", SecretSha256: digest}}, codes.InvalidArgument, "token.roles: must name at least one role"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"root"}, SecretSha256: digest}}, codes.InvalidArgument, `token.roles: unknown role "root"`},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read", "read"}, SecretSha256: digest}}, codes.InvalidArgument, `token.roles: "read" given twice`},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}}}, codes.InvalidArgument, "token.secret_sha256: give it, or the secret"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: "abc"}}, codes.InvalidArgument, "token.secret_sha256: must be 64 hex digits"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: digest}, Secret: "another-secret-0123456789"}, codes.InvalidArgument, "secret: give the secret or token.secret_sha256, not both"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}}, Secret: "short"}, codes.InvalidArgument, "secret: at least 16 characters"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}}, Secret: "has a space in it, long"}, codes.InvalidArgument, "secret: the token holds a space"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: digest, Description: strings.Repeat("d", 300)}}, codes.InvalidArgument, "token.description"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "ci", Roles: []string{"read"}, SecretSha256: digest}}, codes.AlreadyExists, `token "ci" already exists`},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}}, Secret: ciSecret}, codes.AlreadyExists, `token "ci" has the same secret`},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "grafana", Roles: []string{"read"}, SecretSha256: digest}}, codes.AlreadyExists, `token "grafana" is in the -acl-file`},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}}, Secret: f.writeToken}, codes.AlreadyExists, `token "deploy" of the -acl-file`},
	} {
		_, err := ops.CreateToken(ctx, tc.req)
		require.Equal(t, tc.code, status.Code(err), "%v: %v", tc.req, err)
		require.Contains(t, err.Error(), tc.want)
	}
	for _, tc := range []struct {
		req  *pb.CreateTokenRequest
		want string
	}{
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: digest}, Ttl: durationpb.New(time.Second)}, "ttl: between 1m0s and"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: digest}, Ttl: durationpb.New(-time.Hour)}, "ttl: between"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: digest, ExpireTime: timestamppb.New(time.Now().Add(-time.Minute))}}, "token.expire_time: must be a time to come"},
		{&pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"read"}, SecretSha256: digest, ExpireTime: timestamppb.New(time.Now().Add(time.Hour))}, Ttl: durationpb.New(time.Hour)}, "ttl: give it or token.expire_time, not both"},
	} {
		_, err := ops.CreateToken(ctx, tc.req)
		require.Equal(t, codes.InvalidArgument, status.Code(err), "%v: %v", tc.req, err)
		require.Contains(t, err.Error(), tc.want)
	}
	// A token that expires is refused from then on, and still listed.
	const briefSecret = "brief-secret-0123456789ab"
	expires := time.Now().Add(4 * time.Second)
	_, err = ops.CreateToken(ctx, &pb.CreateTokenRequest{Token: &pb.Token{Name: "brief", Roles: []string{"read"}, ExpireTime: timestamppb.New(expires)}, Secret: briefSecret})
	require.NoError(t, err)
	brief := pb.NewPoolServiceClient(dialToken(t, leader.GRPCAddr, briefSecret))
	_, err = brief.ListPools(ctx, &pb.ListPoolsRequest{})
	if time.Until(expires) > time.Second {
		require.NoError(t, err, "admitted before it expires")
	}
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		_, err := brief.ListPools(ctx, &pb.ListPoolsRequest{})
		if status.Code(err) != codes.Unauthenticated {
			return fmt.Errorf("expired token: %v", err)
		}
		return nil
	}))
	require.False(t, time.Now().Before(expires), "refused before it expired")
	// The leader deletes it TokenReapAfter later.
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		list, err := ops.ListTokens(ctx, &pb.ListTokensRequest{Consistent: true})
		if err != nil {
			return err
		}
		for _, tok := range list.Tokens {
			if tok.Name == "brief" {
				return errors.New("the expired token is still stored")
			}
		}
		return nil
	}))
	require.GreaterOrEqual(t, time.Since(expires), time.Second, "reaped before TokenReapAfter")
	require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(context.Context) error {
		if !strings.Contains(clusterLog(c), `msg="expired token deleted"`) {
			return errors.New("no log of the reaping")
		}
		return nil
	}))

	_, err = ops.DeleteToken(ctx, &pb.DeleteTokenRequest{Name: "nope"})
	require.Equal(t, codes.NotFound, status.Code(err), "%v", err)
	_, err = ops.DeleteToken(ctx, &pb.DeleteTokenRequest{})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	list, err = ops.ListTokens(ctx, &pb.ListTokensRequest{Consistent: true})
	require.NoError(t, err)
	require.Len(t, list.Tokens, 1, "the refusals created nothing")

	_, err = ops.DeleteToken(ctx, &pb.DeleteTokenRequest{Name: "ci"})
	require.NoError(t, err)
	for _, n := range c.Running() {
		require.NoError(t, testcluster.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			if err := admitted(n, ciSecret); status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("deleted token: %v", err)
			}
			return nil
		}), n.ID)
	}
}

// clusterLog is every running node's log, joined.
func clusterLog(c *testcluster.Cluster) string {
	var b strings.Builder
	for _, n := range c.Running() {
		b.WriteString(n.Log())
	}
	return b.String()
}

// TestACL_tokensLimitedToPools: a write token limited to "shop-*" and
// "blog" creates, changes and reads those pools only, through a follower
// too; lists answer it its pools alone; it may not reach another pool,
// nodes or alerts. A stored token may be limited so as well.
func TestACL_tokensLimitedToPools(t *testing.T) {
	f := newACLFixture(t)
	c := f.start(t)
	leader := waitLeader(t, c)
	ctx := ctxT(t)
	fol := follower(c, leader)
	for _, name := range []string{"web", "shop-a", "blog"} {
		_, err := retry(ctx, func(ctx context.Context) (*pb.CreatePoolResponse, error) {
			return leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool(name)})
		})
		require.NoError(t, err)
	}
	shopConn := dialToken(t, fol.GRPCAddr, f.shopToken)
	shop := pb.NewPoolServiceClient(shopConn)
	_, err := shop.CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("shop-b")})
	require.NoError(t, err, "a pool of its own, through a follower")
	_, err = shop.AddBackend(ctx, &pb.AddBackendRequest{Pool: "shop-a", Backend: &pb.Backend{Address: "127.0.0.1:9001"}})
	require.NoError(t, err)
	_, err = shop.GetPool(ctx, &pb.GetPoolRequest{Pool: "blog", Consistent: true})
	require.NoError(t, err)

	for name, call := range map[string]func() error{
		"create web2": func() error {
			_, err := shop.CreatePool(ctx, &pb.CreatePoolRequest{Pool: pool("web2")})
			return err
		},
		"scale web": func() error {
			_, err := shop.ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 0})
			return err
		},
		"get web": func() error {
			_, err := shop.GetPool(ctx, &pb.GetPoolRequest{Pool: "web"})
			return err
		},
		"delete web": func() error {
			_, err := shop.DeletePool(ctx, &pb.DeletePoolRequest{Pool: "web"})
			return err
		},
		"web's instances": func() error {
			_, err := shop.ListInstances(ctx, &pb.ListInstancesRequest{Pool: "web"})
			return err
		},
		"web's unplaced": func() error {
			_, err := shop.GetUnplaced(ctx, &pb.GetUnplacedRequest{Pool: "web"})
			return err
		},
		"nodes": func() error {
			_, err := pb.NewNodeServiceClient(shopConn).ListNodes(ctx, &pb.ListNodesRequest{})
			return err
		},
		"rules": func() error {
			_, err := pb.NewAlertServiceClient(shopConn).ListRules(ctx, &pb.ListRulesRequest{})
			return err
		},
	} {
		err := call()
		require.Equal(t, codes.PermissionDenied, status.Code(err), "%s: %v", name, err)
		require.Contains(t, err.Error(), `token "shop" is limited to the pools shop-*,blog`, name)
	}
	list, err := shop.ListPools(ctx, &pb.ListPoolsRequest{Consistent: true})
	require.NoError(t, err)
	var names []string
	for _, p := range list.Pools {
		names = append(names, p.Name)
	}
	require.Equal(t, []string{"blog", "shop-a", "shop-b"}, names, "the list holds its pools alone")

	// Pools of instances no node takes (no agent here): the token hears of
	// its own alone.
	for _, name := range []string{"web-t", "shop-t"} {
		p := pool(name)
		p.Template, p.Max, p.Desired = &pb.InstanceTemplate{Command: "app"}, 2, 1
		_, err := leader.Pools().CreatePool(ctx, &pb.CreatePoolRequest{Pool: p})
		require.NoError(t, err)
	}
	require.NoError(t, testcluster.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
		all, err := leader.Pools().GetUnplaced(ctx, &pb.GetUnplacedRequest{})
		if err != nil || len(all.Pools) != 2 {
			return fmt.Errorf("unplaced: %v, %v", all.GetPools(), err)
		}
		return nil
	}))
	mine, err := shop.GetUnplaced(ctx, &pb.GetUnplacedRequest{})
	require.NoError(t, err)
	require.Len(t, mine.Pools, 1)
	require.Equal(t, "shop-t", mine.Pools[0].Pool)
	require.Equal(t, "no node", mine.Pools[0].Why)
	all, err := leader.Pools().GetPool(ctx, &pb.GetPoolRequest{Pool: "web", Consistent: true})
	require.NoError(t, err)
	require.Zero(t, all.Pool.Desired, "the refused calls changed nothing")

	// A stored token limited to a pool; a limited operator is refused.
	ops := pb.NewTokenServiceClient(dialToken(t, leader.GRPCAddr, f.opsToken))
	_, err = ops.CreateToken(ctx, &pb.CreateTokenRequest{Token: &pb.Token{Name: "web-viewer", Roles: []string{"read"}, Pools: []string{"web"}}, Secret: "web-viewer-0123456789abc"})
	require.NoError(t, err)
	viewer := pb.NewPoolServiceClient(dialToken(t, leader.GRPCAddr, "web-viewer-0123456789abc"))
	list, err = viewer.ListPools(ctx, &pb.ListPoolsRequest{})
	require.NoError(t, err)
	require.Len(t, list.Pools, 1)
	require.Equal(t, "web", list.Pools[0].Name)
	_, err = viewer.ScalePool(ctx, &pb.ScalePoolRequest{Pool: "web", Desired: 1})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "read only: %v", err)
	_, err = ops.CreateToken(ctx, &pb.CreateTokenRequest{Token: &pb.Token{Name: "x", Roles: []string{"operator"}, Pools: []string{"web"}}, Secret: "x-secret-0123456789abcdef"})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Contains(t, err.Error(), "token.pools: only the read and write roles may be limited to pools")
}
