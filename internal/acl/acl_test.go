package acl

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

const (
	opsSecret    = "ops-0123456789abcdef"
	readerSecret = "reader-0123456789abcdef"
	agentSecret  = "agent-0123456789abcdef"
)

func writeFile(t testing.TB, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
	return p
}

func testACL(t testing.TB) string {
	return writeFile(t, "acl", `# name roles secret
ops      operator   `+opsSecret+`
grafana  read       `+Hash(readerSecret)+`

edge     agent,balancer `+agentSecret+`
`)
}

func TestLoadFile_tokensByNameAndRoles(t *testing.T) {
	toks, err := LoadFile(testACL(t))
	require.NoError(t, err)
	require.Equal(t, 3, toks.Len())
	tok, ok := toks.Lookup(readerSecret)
	require.True(t, ok, "a token given by its digest")
	require.Equal(t, Token{Name: "grafana", Roles: Read}, tok)
	tok, ok = toks.Lookup(agentSecret)
	require.True(t, ok)
	require.Equal(t, Agent|Balancer, tok.Roles)
	require.Equal(t, "agent,balancer", tok.Roles.String())
	_, ok = toks.Lookup(Hash(readerSecret))
	require.False(t, ok, "the digest is not a token")
	_, ok = toks.Lookup("")
	require.False(t, ok)
}

func TestLoadFile_errorsNameFileAndLine(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"ops operator", ":1: want NAME ROLE[,ROLE...] SECRET [pools=POOL,...], got 2 fields"},
		{"# c\nops admin " + opsSecret, `:2: unknown role "admin" (want one of read, write, operator, agent, balancer)`},
		{"ops read write " + opsSecret + " x", ":1: want NAME ROLE[,ROLE...] SECRET [pools=POOL,...], got 5 fields"},
		{"ops read write " + opsSecret, `:1: token "ops": the fourth field must be pools=POOL,...`},
		{"ops operator " + opsSecret + " pools=shop-*", `:1: token "ops": only the read and write roles may be limited to pools, not operator`},
		{"ops read " + opsSecret + " pools=*", `:1: token "ops": pool pattern "*": leave the pools out for every pool`},
		{"ops read " + opsSecret + " pools=Shop", `:1: token "ops": pool pattern "Shop": a pool name`},
		{"ops read " + opsSecret + " pools=a,a", `:1: token "ops": pool pattern "a" given twice`},
		{"ops read " + opsSecret + " pools=", `:1: token "ops": pool pattern "": a pool name`},
		{"ops read, " + opsSecret, `:1: unknown role ""`},
		{"ops read,,write " + opsSecret, `:1: unknown role ""`},
		{"ops read short", `:1: token "ops": secret shorter than 16 characters`},
		{"ops read 0123456789abcdef\x01ctl", `:1: token "ops": the token holds a space, a control or a non-ASCII character at byte 16`},
		{"ops read sha256:abc", `:1: token "ops": sha256: must be followed by 64 hex digits`},
		{"ops read " + opsSecret + "\n\nops write " + readerSecret, `:3: token name "ops" already used on line 1`},
		{"ops read " + opsSecret + "\nci write " + Hash(opsSecret), `:2: token "ci" has the same secret as "ops"`},
		{"# only comments\n\n", "no tokens: an empty ACL file would refuse every call"},
		{"ops read " + strings.Repeat("x", 70<<10), ":1: bufio.Scanner: token too long"},
	} {
		p := writeFile(t, "acl", c.text)
		_, err := LoadFile(p)
		require.Error(t, err, c.text)
		require.Contains(t, err.Error(), p, c.text)
		require.Contains(t, err.Error(), c.want)
	}
	_, err := LoadFile(filepath.Join(t.TempDir(), "missing"))
	require.ErrorContains(t, err, "ACL file: open ")
}

func TestRoles_nest(t *testing.T) {
	require.True(t, Operator.grants(Write))
	require.True(t, Operator.grants(Read))
	require.True(t, Write.grants(Read))
	require.False(t, Read.grants(Write))
	require.False(t, Write.grants(Operator))
	require.False(t, Operator.grants(Agent), "operators do not stand in for agents")
	require.False(t, Agent.grants(Read))
	require.True(t, (Agent | Read).grants(Read))
	require.Equal(t, "none", Role(0).String())
}

func TestFile_reloadKeepsTheTokensWhenTheFileIsBad(t *testing.T) {
	p := testACL(t)
	f, err := OpenFile(p)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p, []byte("ops nope "+opsSecret), 0o600))
	require.ErrorContains(t, f.Reload(), "unknown role")
	_, ok := f.Tokens().Lookup(readerSecret)
	require.True(t, ok, "the old tokens stay")
	require.NoError(t, os.WriteFile(p, []byte("ops operator "+opsSecret), 0o600))
	require.NoError(t, f.Reload())
	_, ok = f.Tokens().Lookup(readerSecret)
	require.False(t, ok, "a token gone from the file is revoked")
}

func TestTokenFile(t *testing.T) {
	p := writeFile(t, "token", "  "+opsSecret+"\n")
	f, err := ReadTokenFile(p)
	require.NoError(t, err)
	require.Equal(t, opsSecret, f.Token())
	for _, bad := range []string{"", " \n", "two words", "tab\there", "caf\u00e9-token", "nul\x00x"} {
		require.NoError(t, os.WriteFile(p, []byte(bad), 0o600))
		require.Error(t, f.Reload(), "%q", bad)
		require.Equal(t, opsSecret, f.Token(), "a bad file leaves the token")
		_, err := ReadTokenFile(p)
		require.ErrorContains(t, err, p)
	}
	var none *TokenFile
	require.Empty(t, none.Token())
}

// statusServer answers GetStatus and ListMembers (read) and AddMember
// (operator); ListPools has no rule.
type statusServer struct {
	pb.UnimplementedClusterServiceServer
	callers chan string
}

func (s *statusServer) GetStatus(ctx context.Context, _ *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	s.callers <- grpcx.Caller(ctx)
	return &pb.GetStatusResponse{Id: "c1"}, nil
}

func (s *statusServer) AddMember(ctx context.Context, _ *pb.AddMemberRequest) (*pb.AddMemberResponse, error) {
	s.callers <- grpcx.Caller(ctx)
	return &pb.AddMemberResponse{}, nil
}

func (s *statusServer) RestoreSnapshot(stream pb.ClusterService_RestoreSnapshotServer) error {
	s.callers <- grpcx.Caller(stream.Context())
	return stream.SendAndClose(&pb.RestoreSnapshotResponse{})
}

// serve starts a grpcx server on loopback whose calls need tokens of path.
func serve(t *testing.T, path string) (addr string, srv *statusServer) {
	t.Helper()
	f, err := OpenFile(path)
	require.NoError(t, err)
	cfg := grpcx.DefaultServerConfig()
	cfg.Authorize = (&Authorizer{Lookup: f.Lookup, Rules: Rules{
		"/hostscale.v1.ClusterService/GetStatus":       Read,
		"/hostscale.v1.ClusterService/AddMember":       Operator,
		"/hostscale.v1.ClusterService/RestoreSnapshot": Operator,
	}}).Authorize
	s, err := grpcx.NewServer(cfg)
	require.NoError(t, err)
	srv = &statusServer{callers: make(chan string, 16)}
	pb.RegisterClusterServiceServer(s, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, lis, time.Second) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return lis.Addr().String(), srv
}

func dial(t *testing.T, addr string, opts ...grpc.DialOption) pb.ClusterServiceClient {
	t.Helper()
	conn, err := grpcx.Dial(addr, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return pb.NewClusterServiceClient(conn)
}

func token(secret string) grpc.DialOption {
	return grpc.WithPerRPCCredentials(Credentials(func() string { return secret }))
}

func TestAuthorizer_overGRPC(t *testing.T) {
	addr, srv := serve(t, testACL(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := dial(t, addr, token(readerSecret)).GetStatus(ctx, &pb.GetStatusRequest{})
	require.NoError(t, err)
	require.Equal(t, "grafana", <-srv.callers, "the handler knows the caller")
	_, err = dial(t, addr, token(opsSecret)).GetStatus(ctx, &pb.GetStatusRequest{})
	require.NoError(t, err, "operator includes read")
	<-srv.callers
	_, err = dial(t, addr, token(opsSecret)).AddMember(ctx, &pb.AddMemberRequest{})
	require.NoError(t, err)
	<-srv.callers

	_, err = dial(t, addr, token(readerSecret)).AddMember(ctx, &pb.AddMemberRequest{})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.Contains(t, err.Error(), `token "grafana" (roles read) may not call /hostscale.v1.ClusterService/AddMember: it needs the operator role`)
	require.NotContains(t, err.Error(), readerSecret)
	_, err = dial(t, addr, token(agentSecret)).GetStatus(ctx, &pb.GetStatusRequest{})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)

	noToken := dial(t, addr)
	_, err = noToken.GetStatus(ctx, &pb.GetStatusRequest{})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	require.Contains(t, err.Error(), "no ACL token")
	_, err = dial(t, addr, token("not-a-known-token-at-all")).GetStatus(ctx, &pb.GetStatusRequest{})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	require.Contains(t, err.Error(), "not one this controller knows")

	// A method without a rule is refused to every token.
	_, err = dial(t, addr, token(opsSecret)).ListMembers(ctx, &pb.ListMembersRequest{})
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	require.Contains(t, err.Error(), "no ACL rule admits /hostscale.v1.ClusterService/ListMembers")

	// Streams are checked when they open.
	rs, err := dial(t, addr, token(readerSecret)).RestoreSnapshot(ctx)
	require.NoError(t, err)
	_, err = rs.CloseAndRecv()
	require.Equal(t, codes.PermissionDenied, status.Code(err), "%v", err)
	rs, err = dial(t, addr, token(opsSecret)).RestoreSnapshot(ctx)
	require.NoError(t, err)
	_, err = rs.CloseAndRecv()
	require.NoError(t, err)
	require.Equal(t, "ops", <-srv.callers)

	// Health stays open.
	conn, err := grpcx.Dial(addr)
	require.NoError(t, err)
	defer conn.Close()
	h, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.Status)

	// Garbage in the metadata: a clear refusal, and the server goes on.
	for _, md := range [][]string{
		{"authorization", "Basic b3BzOnNlY3JldA=="},
		{"authorization", "Bearer"},
		{"authorization", "Bearer    "},
		{"authorization", opsSecret},
		{"authorization", "Bearer " + opsSecret, "authorization", "Bearer " + readerSecret},
		{"authorization", "Bearer " + strings.Repeat("A", 8<<10)},
		{"authorization", "Bearer ~!@#$%^&*()_+{}|:<>?"},
	} {
		_, err := noToken.GetStatus(metadata.AppendToOutgoingContext(ctx, md...), &pb.GetStatusRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%q: %v", md, err)
	}
	_, err = noToken.GetStatus(metadata.AppendToOutgoingContext(ctx, "authorization", "bearer  "+readerSecret+" "), &pb.GetStatusRequest{})
	require.NoError(t, err, "the scheme is case-insensitive, as in HTTP")
	require.Equal(t, "grafana", <-srv.callers)
}

func TestRules_missing(t *testing.T) {
	r := Rules{"/a.S/M": Read}
	require.Equal(t, []string{"/a.S/N"}, r.Missing([]string{"/a.S/M", "/a.S/N", "/grpc.health.v1.Health/Check", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}))
}

func TestHash(t *testing.T) {
	require.Equal(t, "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Hash("test"))
}

func TestAuthorizer_HTTP(t *testing.T) {
	f, err := OpenFile(testACL(t))
	require.NoError(t, err)
	a := &Authorizer{Lookup: f.Lookup}
	h := a.HTTP(Read, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) }))
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(header ...string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
		require.NoError(t, err)
		for _, v := range header {
			req.Header.Add("Authorization", v)
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("Bearer " + readerSecret)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "metrics", body)
	code, _ = get("bearer " + opsSecret)
	require.Equal(t, http.StatusOK, code, "operator includes read")
	code, body = get("Bearer " + agentSecret)
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, body, `token "edge" (roles agent,balancer) may not read /metrics: it needs the read role`)
	for _, h := range [][]string{nil, {"Bearer"}, {"Basic " + readerSecret}, {readerSecret}, {"Bearer nope-nope-nope-nope"}, {"Bearer " + readerSecret, "Bearer " + readerSecret}} {
		code, body = get(h...)
		require.Equal(t, http.StatusUnauthorized, code, "%q: %s", h, body)
		require.NotContains(t, body, "metrics\n")
	}
}

func TestToken_pools(t *testing.T) {
	p := writeFile(t, "acl", "shop write "+opsSecret+" pools=shop-*,blog\n")
	toks, err := LoadFile(p)
	require.NoError(t, err)
	tok, ok := toks.Lookup(opsSecret)
	require.True(t, ok)
	require.Equal(t, []string{"shop-*", "blog"}, tok.Pools)
	for name, want := range map[string]bool{"shop-a": true, "shop-": true, "blog": true, "blog2": false, "shop": false, "web": false} {
		require.Equal(t, want, tok.PoolAllowed(name), name)
	}
	require.True(t, Token{Name: "all"}.PoolAllowed("anything"), "no pools: every pool")
}
