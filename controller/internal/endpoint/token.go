package endpoint

import (
	"context"
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// MaxTokenDescription bounds a token's description.
const MaxTokenDescription = 256

// MinTokenTTL and MaxTokenTTL bound CreateTokenRequest.ttl.
const (
	MinTokenTTL = time.Minute
	MaxTokenTTL = 10 * 365 * 24 * time.Hour
)

// Tokens serves hostscale.v1.TokenService: the ACL tokens of the
// replicated state.
type Tokens struct {
	pb.UnimplementedTokenServiceServer
	Core *Core
	// File returns the tokens of this controller's -acl-file, whose names
	// and secrets a new token may not take; nil without one.
	File func() *acl.Tokens
}

func (s *Tokens) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if req.Token == nil {
		return nil, invalid("token", "must be set")
	}
	if err := checkName("token.name", req.Token.Name); err != nil {
		return nil, err
	}
	if len(req.Token.Roles) == 0 {
		return nil, invalid("token.roles", "must name at least one role (%s)", strings.Join(acl.RoleNames(), ", "))
	}
	seen := map[string]bool{}
	var roles acl.Role
	for _, r := range req.Token.Roles {
		role, err := acl.ParseRole(r)
		if err != nil {
			return nil, invalid("token.roles", "%v", err)
		}
		if seen[r] {
			return nil, invalid("token.roles", "%q given twice", r)
		}
		seen[r] = true
		roles |= role
	}
	if err := acl.CheckPools(req.Token.Pools, roles); err != nil {
		return nil, invalid("token.pools", "%v", err)
	}
	if len(req.Token.Description) > MaxTokenDescription {
		return nil, invalid("token.description", "at most %d bytes, got %d", MaxTokenDescription, len(req.Token.Description))
	}
	switch {
	case req.Secret != "" && req.Token.SecretSha256 != "":
		return nil, invalid("secret", "give the secret or token.secret_sha256, not both")
	case req.Secret != "":
		if err := acl.CheckToken(req.Secret); err != nil {
			return nil, invalid("secret", "%v", err)
		}
		if len(req.Secret) < acl.MinTokenLength {
			return nil, invalid("secret", "at least %d characters, got %d", acl.MinTokenLength, len(req.Secret))
		}
		req.Token.SecretSha256 = strings.TrimPrefix(acl.Hash(req.Secret), acl.HashPrefix)
		req.Secret = ""
	case req.Token.SecretSha256 == "":
		return nil, invalid("token.secret_sha256", "give it, or the secret")
	default:
		sum, ok := acl.ParseDigest(req.Token.SecretSha256)
		if !ok {
			return nil, invalid("token.secret_sha256", "must be 64 hex digits")
		}
		req.Token.SecretSha256 = hex.EncodeToString(sum[:])
	}
	if s.File != nil {
		file := s.File()
		if file.Has(req.Token.Name) {
			return nil, status.Errorf(codes.AlreadyExists, "token %q is in the -acl-file of %s", req.Token.Name, s.Core.ID)
		}
		if tok, ok := file.LookupDigest(req.Token.SecretSha256); ok {
			return nil, status.Errorf(codes.AlreadyExists, "token %q of the -acl-file of %s has the same secret", tok.Name, s.Core.ID)
		}
	}
	switch {
	case req.Ttl != nil && req.Token.ExpireTime != nil:
		return nil, invalid("ttl", "give it or token.expire_time, not both")
	case req.Ttl != nil:
		ttl := req.Ttl.AsDuration()
		if req.Ttl.CheckValid() != nil || ttl < MinTokenTTL || ttl > MaxTokenTTL {
			return nil, invalid("ttl", "between %v and %v", MinTokenTTL, MaxTokenTTL)
		}
		req.Token.ExpireTime = timestamppb.New(time.Now().Add(ttl))
		req.Ttl = nil
	case req.Token.ExpireTime != nil:
		if req.Token.ExpireTime.CheckValid() != nil || !req.Token.ExpireTime.AsTime().After(time.Now()) {
			return nil, invalid("token.expire_time", "must be a time to come")
		}
	}
	req.Token.CreateTime = nil
	if forwardedBy(ctx) == "" {
		// The controller that took the call names its caller; the leader
		// keeps what a forwarded call says.
		req.Token.CreatedBy = grpcx.Caller(ctx)
	}
	resp := &pb.CreateTokenResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_PutToken{PutToken: &pb.PutTokenCommand{Token: req.Token}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = res.Index
	s.Core.FSM.Read(func(st *pb.State) {
		if tok := st.Tokens[req.Token.Name]; tok != nil {
			resp.Token = proto.Clone(tok).(*pb.Token)
		}
	})
	if resp.Token == nil {
		// Deleted since: answer what was created.
		resp.Token = req.Token
	}
	return resp, nil
}

func (s *Tokens) ListTokens(ctx context.Context, req *pb.ListTokensRequest) (*pb.ListTokensResponse, error) {
	resp := &pb.ListTokensResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		for _, name := range slices.Sorted(maps.Keys(st.Tokens)) {
			resp.Tokens = append(resp.Tokens, proto.Clone(st.Tokens[name]).(*pb.Token))
		}
	})
	return resp, nil
}

func (s *Tokens) DeleteToken(ctx context.Context, req *pb.DeleteTokenRequest) (*pb.DeleteTokenResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("name", req.Name); err != nil {
		return nil, err
	}
	resp := &pb.DeleteTokenResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_DeleteToken{DeleteToken: &pb.DeleteTokenCommand{Name: req.Name}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = res.Index
	return resp, nil
}
