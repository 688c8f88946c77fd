package acl

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/internal/grpcx"
)

// MetadataKey is the gRPC metadata that carries a token, as
// "Bearer TOKEN".
const MetadataKey = "authorization"

// Authorizer checks each call's token against the tokens in force and the
// rules. Its Authorize is a grpcx.ServerConfig.Authorize.
type Authorizer struct {
	// Lookup finds the token of a secret among those in force
	// (File.Lookup, and the controllers' replicated tokens).
	Lookup func(secret string) (Token, bool)
	Rules  Rules
}

// Authorize admits a call of method: it returns ctx naming the caller's
// token (grpcx.Caller), or an error with status Unauthenticated (no token,
// or one not known) or PermissionDenied (a token without the role the
// method needs). The error names the token, never its secret.
func (a *Authorizer) Authorize(ctx context.Context, method string) (context.Context, error) {
	if exempt(method) {
		return ctx, nil
	}
	secret, err := bearer(ctx)
	if err != nil {
		return ctx, err
	}
	tok, ok := a.Lookup(secret)
	if !ok {
		return ctx, status.Error(codes.Unauthenticated, "the ACL token is not one this controller knows")
	}
	ctx = context.WithValue(grpcx.WithCaller(ctx, tok.Name), tokenKey{}, tok)
	need, ok := a.Rules[method]
	if !ok {
		return ctx, status.Errorf(codes.PermissionDenied, "no ACL rule admits %s: no token may call it", method)
	}
	if !tok.Roles.grants(need) {
		return ctx, status.Errorf(codes.PermissionDenied, "token %q (roles %v) may not call %s: it needs the %v role", tok.Name, tok.Roles, method, need)
	}
	return ctx, nil
}

type tokenKey struct{}

// FromContext returns the token Authorize admitted the call of ctx with.
func FromContext(ctx context.Context) (Token, bool) {
	tok, ok := ctx.Value(tokenKey{}).(Token)
	return tok, ok
}

func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	secret, problem := bearerSecret(md.Get(MetadataKey))
	if problem != "" {
		return "", status.Error(codes.Unauthenticated, problem)
	}
	return secret, nil
}

// bearerSecret takes the secret out of the values of an authorization
// header or metadata, which must be one "Bearer SECRET" (the scheme in any
// case, as in HTTP); else it says what is wrong.
func bearerSecret(vals []string) (secret, problem string) {
	switch {
	case len(vals) == 0:
		return "", "no ACL token: this controller requires one in the metadata authorization: Bearer TOKEN (hostscale -token-file or HOSTSCALE_TOKEN)"
	case len(vals) > 1:
		return "", fmt.Sprintf("metadata authorization: %d values, want one", len(vals))
	}
	scheme, secret, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	secret = strings.TrimSpace(secret)
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
		return "", `metadata authorization: want "Bearer TOKEN"`
	}
	return secret, ""
}

// Credentials send the token that src returns with every call; an empty
// token sends none. They go over plaintext connections too: a cluster
// without TLS is trusted to its network, and its tokens then guard against
// mistakes rather than eavesdroppers.
func Credentials(src func() string) credentials.PerRPCCredentials {
	return perRPC(src)
}

type perRPC func() string

func (p perRPC) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	tok := p()
	if tok == "" {
		return nil, nil
	}
	return map[string]string{MetadataKey: "Bearer " + tok}, nil
}

func (perRPC) RequireTransportSecurity() bool { return false }

// WithToken is a dial option sending f's token with every call; a nil f
// sends none.
func WithToken(f *TokenFile) grpc.DialOption {
	if f == nil {
		return grpc.EmptyDialOption{}
	}
	return grpc.WithPerRPCCredentials(Credentials(f.Token))
}

// HTTP wraps h so that it answers only requests with a token holding
// need, in the header "Authorization: Bearer TOKEN" (Prometheus's
// scrape_config authorization), and 401 or 403 to the others, as the gRPC
// API does.
func (a *Authorizer) HTTP(need Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secret, problem := bearerSecret(r.Header.Values("Authorization"))
		tok, ok := Token{}, false
		if problem == "" {
			tok, ok = a.Lookup(secret)
		}
		switch {
		case !ok:
			w.Header().Set("WWW-Authenticate", `Bearer realm="hostscale"`)
			http.Error(w, "an ACL token is needed: Authorization: Bearer TOKEN, of a token with the "+need.String()+" role", http.StatusUnauthorized)
		case !tok.Roles.grants(need):
			http.Error(w, fmt.Sprintf("token %q (roles %v) may not read %s: it needs the %v role", tok.Name, tok.Roles, r.URL.Path, need), http.StatusForbidden)
		default:
			h.ServeHTTP(w, r)
		}
	})
}
