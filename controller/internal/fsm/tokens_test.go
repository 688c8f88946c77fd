package fsm

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/acl"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestFSM_tokens(t *testing.T) {
	f := New(nil)
	digest := strings.Repeat("ab", 32)
	sum, ok := acl.ParseDigest(digest)
	require.True(t, ok)
	index := uint64(0)
	apply := func(c *pb.Command) error {
		index++
		data, err := proto.Marshal(c)
		require.NoError(t, err)
		return f.Apply(&raft.Log{Index: index, Term: 1, Data: data}).(*Result).Err
	}
	put := func(name, digest string) error {
		return apply(&pb.Command{Time: timestamppb.Now(), Command: &pb.Command_PutToken{PutToken: &pb.PutTokenCommand{
			Token: &pb.Token{Name: name, Roles: []string{"read"}, SecretSha256: digest}}}})
	}
	require.NoError(t, put("grafana", digest))
	tok, ok := f.TokenBySum(sum)
	require.True(t, ok)
	require.Equal(t, "grafana", tok.Name)
	require.NotNil(t, tok.CreateTime, "stamped with the command's time")

	require.Equal(t, codes.AlreadyExists, status.Code(put("grafana", strings.Repeat("cd", 32))))
	err := put("other", digest)
	require.Equal(t, codes.AlreadyExists, status.Code(err))
	require.Contains(t, err.Error(), `token "grafana" has the same secret`)
	require.Equal(t, codes.InvalidArgument, status.Code(put("", strings.Repeat("cd", 32))))
	require.Equal(t, codes.InvalidArgument, status.Code(put("short", "abc")))

	// A snapshot carries the tokens, and a restore indexes them.
	snap, err := f.Snapshot()
	require.NoError(t, err)
	sink := &memSink{}
	require.NoError(t, snap.Persist(sink))
	g := New(nil)
	require.NoError(t, g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	tok, ok = g.TokenBySum(sum)
	require.True(t, ok)
	require.Equal(t, "grafana", tok.Name)

	require.NoError(t, apply(&pb.Command{Command: &pb.Command_DeleteToken{DeleteToken: &pb.DeleteTokenCommand{Name: "grafana"}}}))
	_, ok = f.TokenBySum(sum)
	require.False(t, ok, "a deleted token is refused at once")
	require.Equal(t, codes.NotFound, status.Code(apply(&pb.Command{Command: &pb.Command_DeleteToken{DeleteToken: &pb.DeleteTokenCommand{Name: "grafana"}}})))
	require.NoError(t, put("again", digest), "a deleted token's secret may be used again")
}

func TestDecode_refusesTokensUnderTheWrongKeyOrSharingASecret(t *testing.T) {
	d := strings.Repeat("ab", 32)
	for _, st := range []*pb.State{
		{Tokens: map[string]*pb.Token{"a": {Name: "b", SecretSha256: d}}},
		{Tokens: map[string]*pb.Token{"a": {Name: "a", SecretSha256: d}, "b": {Name: "b", SecretSha256: d}}},
	} {
		data, err := Encode(st)
		require.NoError(t, err)
		_, err = Decode(bytes.NewReader(data))
		require.Error(t, err)
	}
}
