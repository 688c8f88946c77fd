package fsm

import (
	"crypto/sha256"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/acl"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// putToken stores a new ACL token; the endpoint has checked its fields.
func (f *FSM) putToken(c *pb.PutTokenCommand, at *timestamppb.Timestamp) error {
	tok := c.GetToken()
	switch {
	case tok.GetName() == "":
		return status.Error(codes.InvalidArgument, "token.name: must not be empty")
	case len(tok.GetSecretSha256()) != 64:
		return status.Error(codes.InvalidArgument, "token.secret_sha256: must be 64 hex digits")
	}
	if _, ok := f.state.Tokens[tok.Name]; ok {
		return status.Errorf(codes.AlreadyExists, "token %q already exists", tok.Name)
	}
	sum, ok := acl.ParseDigest(tok.SecretSha256)
	if !ok {
		return status.Error(codes.InvalidArgument, "token.secret_sha256: must be 64 hex digits")
	}
	if other, ok := f.tokenByDigest[sum]; ok {
		return status.Errorf(codes.AlreadyExists, "token %q has the same secret", other)
	}
	tok = proto.Clone(tok).(*pb.Token)
	if tok.CreateTime == nil {
		tok.CreateTime = at
	}
	f.state.Tokens[tok.Name] = tok
	f.tokenByDigest[sum] = tok.Name
	return nil
}

func (f *FSM) deleteToken(c *pb.DeleteTokenCommand) error {
	tok, ok := f.state.Tokens[c.GetName()]
	if !ok {
		return status.Errorf(codes.NotFound, "token %q not found", c.GetName())
	}
	if sum, ok := acl.ParseDigest(tok.SecretSha256); ok {
		delete(f.tokenByDigest, sum)
	}
	delete(f.state.Tokens, c.GetName())
	return nil
}

// TokenBySum returns the stored token whose secret has the SHA-256
// digest sum, without copying it: the caller must not change it.
func (f *FSM) TokenBySum(sum [sha256.Size]byte) (*pb.Token, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	name, ok := f.tokenByDigest[sum]
	if !ok {
		return nil, false
	}
	return f.state.Tokens[name], true
}
