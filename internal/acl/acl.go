// Package acl holds hostscale's access control: the tokens a controller
// accepts, the roles each token grants, the rule that says which role each
// API method needs, and the client side that sends a token with every call.
//
// A controller started with an ACL file refuses every call on its gRPC API
// that carries no token it knows (Unauthenticated), and every call whose
// token lacks the role the method needs (PermissionDenied). The gRPC health
// service and server reflection stay open, as load balancers' health checks
// and grpcurl's list need them and they reveal nothing of the cluster.
//
// A token travels as the gRPC metadata "authorization: Bearer TOKEN", which
// is what grpcurl sends with -H 'authorization: Bearer TOKEN'.
package acl

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
)

// Role is what a token may do. Read, Write and Operator nest: each grants
// what the one before it does. Agent and Balancer are the calls of those
// two programs only.
type Role uint8

const (
	// Read lists and gets: pools, nodes, instances, metrics, alerts, the
	// cluster's status and members.
	Read Role = 1 << iota
	// Write also changes pools, nodes, rules and silences.
	Write
	// Operator also changes the cluster itself: members, leadership,
	// snapshots. The controllers' own token needs it.
	Operator
	// Agent runs an agent's stream to the controllers.
	Agent
	// Balancer watches tables, acknowledges them and reports stats.
	Balancer
)

var roleNames = []struct {
	name string
	role Role
}{
	{"read", Read},
	{"write", Write},
	{"operator", Operator},
	{"agent", Agent},
	{"balancer", Balancer},
}

// RoleNames lists the roles an ACL file may name.
func RoleNames() []string {
	out := make([]string, len(roleNames))
	for i, r := range roleNames {
		out[i] = r.name
	}
	return out
}

// ParseRole parses one role's name.
func ParseRole(s string) (Role, error) {
	for _, r := range roleNames {
		if r.name == s {
			return r.role, nil
		}
	}
	return 0, fmt.Errorf("unknown role %q (want one of %s)", s, strings.Join(RoleNames(), ", "))
}

// String names the roles of r, comma-separated.
func (r Role) String() string {
	var names []string
	for _, n := range roleNames {
		if r&n.role != 0 {
			names = append(names, n.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// grants reports whether holding r allows what need asks: Operator
// includes Write, and Write includes Read.
func (r Role) grants(need Role) bool {
	have := r
	if have&Operator != 0 {
		have |= Write
	}
	if have&Write != 0 {
		have |= Read
	}
	return have&need == need
}

// MinTokenLength is the shortest secret an ACL file accepts: 16 random
// characters are out of reach of guessing; `hostscale token new` makes 32
// bytes of hex.
const MinTokenLength = 16

// HashPrefix marks a token given in an ACL file by its SHA-256 digest, so
// that the file need not hold the secret itself.
const HashPrefix = "sha256:"

// Hash returns the SHA-256 form of token that an ACL file accepts.
func Hash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return HashPrefix + hex.EncodeToString(sum[:])
}

// Token is one entry of an ACL file.
type Token struct {
	// Name identifies the token in logs and errors; the secret never
	// appears there.
	Name  string
	Roles Role
	// Pools, when set, limits the token to the pools these patterns name
	// (PoolAllowed): its read and write roles then reach those pools
	// only, and nothing else.
	Pools []string
}

// PoolAllowed reports whether tok may reach the pool named name: any pool
// for a token without Pools, else one that a pattern names exactly, or
// whose name starts with the part of a pattern before its final "*".
func (tok Token) PoolAllowed(name string) bool {
	if len(tok.Pools) == 0 {
		return true
	}
	for _, p := range tok.Pools {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if strings.HasPrefix(name, prefix) {
				return true
			}
		} else if p == name {
			return true
		}
	}
	return false
}

// ScopableRoles are the roles a token limited to pools may hold.
const ScopableRoles = Read | Write

// CheckPools checks the pool patterns of a token with roles: each a pool
// name, or a name's first part and "*"; only read and write may be
// limited to pools.
func CheckPools(patterns []string, roles Role) error {
	if len(patterns) == 0 {
		return nil
	}
	if roles&^ScopableRoles != 0 {
		return fmt.Errorf("only the read and write roles may be limited to pools, not %v", roles&^ScopableRoles)
	}
	seen := map[string]bool{}
	for _, p := range patterns {
		name := strings.TrimSuffix(p, "*")
		if name == "" && p == "*" {
			return errors.New(`pool pattern "*": leave the pools out for every pool`)
		}
		if !validPoolPattern(name) {
			return fmt.Errorf("pool pattern %q: a pool name, or the start of one and a final *", p)
		}
		if seen[p] {
			return fmt.Errorf("pool pattern %q given twice", p)
		}
		seen[p] = true
	}
	return nil
}

// validPoolPattern accepts what may start a pool name: lower-case
// letters, digits and dashes, at most 63 characters.
func validPoolPattern(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Tokens is a loaded ACL file: the tokens by their secrets' digests.
type Tokens struct {
	byHash map[[sha256.Size]byte]Token
}

// Len is the number of tokens.
func (t *Tokens) Len() int { return len(t.byHash) }

// Lookup returns the token whose secret is secret.
func (t *Tokens) Lookup(secret string) (Token, bool) {
	return t.LookupSum(sha256.Sum256([]byte(secret)))
}

// LookupSum returns the token whose secret has the SHA-256 digest sum.
func (t *Tokens) LookupSum(sum [sha256.Size]byte) (Token, bool) {
	tok, ok := t.byHash[sum]
	return tok, ok
}

// LookupDigest returns the token whose secret has the SHA-256 digest
// hexDigest (64 hex digits).
func (t *Tokens) LookupDigest(hexDigest string) (Token, bool) {
	sum, ok := ParseDigest(hexDigest)
	if !ok {
		return Token{}, false
	}
	return t.LookupSum(sum)
}

// ParseDigest decodes a secret's SHA-256 digest given as 64 hex digits.
func ParseDigest(hexDigest string) ([sha256.Size]byte, bool) {
	b, err := hex.DecodeString(hexDigest)
	if err != nil || len(b) != sha256.Size {
		return [sha256.Size]byte{}, false
	}
	return [sha256.Size]byte(b), true
}

// Has reports whether a token is named name.
func (t *Tokens) Has(name string) bool {
	for _, tok := range t.byHash {
		if tok.Name == name {
			return true
		}
	}
	return false
}

// ParseRoles parses a token's role names.
func ParseRoles(names []string) (Role, error) {
	var r Role
	for _, n := range names {
		role, err := ParseRole(n)
		if err != nil {
			return 0, err
		}
		r |= role
	}
	return r, nil
}

// LoadFile reads an ACL file: one token a line, as
//
//	NAME  ROLE[,ROLE...]  SECRET
//
// where SECRET is the token itself (at least MinTokenLength characters,
// no spaces) or its digest as sha256:HEX. Blank lines and lines starting
// with # are ignored. An error names the file and the line.
func LoadFile(path string) (*Tokens, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ACL file: %w", err)
	}
	return parse(path, data)
}

func parse(path string, data []byte) (*Tokens, error) {
	t := &Tokens{byHash: map[[sha256.Size]byte]Token{}}
	names := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%s:%d: %s", path, line, fmt.Sprintf(format, a...))
		}
		f := strings.Fields(text)
		if len(f) != 3 && len(f) != 4 {
			return nil, bad("want NAME ROLE[,ROLE...] SECRET [pools=POOL,...], got %d fields", len(f))
		}
		name, roles, secret := f[0], f[1], f[2]
		var pools []string
		if len(f) == 4 {
			list, ok := strings.CutPrefix(f[3], "pools=")
			if !ok {
				return nil, bad("token %q: the fourth field must be pools=POOL,...", name)
			}
			pools = strings.Split(list, ",")
		}
		if first, ok := names[name]; ok {
			return nil, bad("token name %q already used on line %d", name, first)
		}
		r, err := ParseRoles(strings.Split(roles, ","))
		if err != nil {
			return nil, bad("%v", err)
		}
		if err := CheckPools(pools, r); err != nil {
			return nil, bad("token %q: %v", name, err)
		}
		var sum [sha256.Size]byte
		if hexSum, ok := strings.CutPrefix(secret, HashPrefix); ok {
			if sum, ok = ParseDigest(hexSum); !ok {
				return nil, bad("token %q: %s must be followed by 64 hex digits", name, HashPrefix)
			}
		} else {
			if len(secret) < MinTokenLength {
				return nil, bad("token %q: secret shorter than %d characters", name, MinTokenLength)
			}
			if err := CheckToken(secret); err != nil {
				return nil, bad("token %q: %v", name, err)
			}
			sum = sha256.Sum256([]byte(secret))
		}
		if other, ok := t.byHash[sum]; ok {
			return nil, bad("token %q has the same secret as %q", name, other.Name)
		}
		names[name] = line
		t.byHash[sum] = Token{Name: name, Roles: r, Pools: pools}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s:%d: %w", path, line+1, err)
	}
	if len(t.byHash) == 0 {
		return nil, fmt.Errorf("%s: no tokens: an empty ACL file would refuse every call", path)
	}
	return t, nil
}

// File is an ACL file that Reload reads again; what fails to load leaves
// the tokens as they were.
type File struct {
	path   string
	tokens atomic.Pointer[Tokens]
}

// OpenFile loads the ACL file at path.
func OpenFile(path string) (*File, error) {
	t, err := LoadFile(path)
	if err != nil {
		return nil, err
	}
	f := &File{path: path}
	f.tokens.Store(t)
	return f, nil
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Tokens are the tokens loaded last.
func (f *File) Tokens() *Tokens { return f.tokens.Load() }

// Lookup finds secret's token among the tokens loaded last.
func (f *File) Lookup(secret string) (Token, bool) { return f.Tokens().Lookup(secret) }

// Reload reads the file again.
func (f *File) Reload() error {
	t, err := LoadFile(f.path)
	if err != nil {
		return err
	}
	f.tokens.Store(t)
	return nil
}

// TokenFile holds the token a program sends with its calls, read from a
// file holding it alone (surrounding white space is ignored). Reload reads
// it again; what fails to load leaves the token as it was.
type TokenFile struct {
	path  string
	token atomic.Pointer[string]
}

// ReadTokenFile loads the token in path.
func ReadTokenFile(path string) (*TokenFile, error) {
	tok, err := readToken(path)
	if err != nil {
		return nil, err
	}
	f := &TokenFile{path: path}
	f.token.Store(&tok)
	return f, nil
}

func readToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if err := CheckToken(tok); err != nil {
		return "", fmt.Errorf("token file %s: %w", path, err)
	}
	return tok, nil
}

// CheckToken reports what makes tok unfit to send: empty, or holding white
// space or control characters, which a gRPC header cannot carry.
func CheckToken(tok string) error {
	if tok == "" {
		return errors.New("empty token")
	}
	if i := strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r >= 0x7f }); i >= 0 {
		return fmt.Errorf("the token holds a space, a control or a non-ASCII character at byte %d", i)
	}
	return nil
}

// Path is the file's path.
func (f *TokenFile) Path() string { return f.path }

// Token returns the token loaded last; a nil f has none.
func (f *TokenFile) Token() string {
	if f == nil {
		return ""
	}
	return *f.token.Load()
}

// Reload reads the file again.
func (f *TokenFile) Reload() error {
	tok, err := readToken(f.path)
	if err != nil {
		return err
	}
	f.token.Store(&tok)
	return nil
}

// exempt reports whether method is open to every caller: the health
// service and server reflection.
func exempt(method string) bool {
	return strings.HasPrefix(method, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(method, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(method, "/grpc.reflection.v1alpha.ServerReflection/")
}

// Rules says which role each method (its full gRPC name) needs.
type Rules map[string]Role

// Missing returns the methods among methods that have no rule and are not
// open to everyone, sorted: a new RPC without a rule is refused to every
// token, and a test of the rules should catch it first.
func (r Rules) Missing(methods []string) []string {
	var out []string
	for _, m := range methods {
		if _, ok := r[m]; !ok && !exempt(m) {
			out = append(out, m)
		}
	}
	slices.Sort(out)
	return out
}

// Admits reports whether tok may call method.
func (r Rules) Admits(tok Token, method string) bool {
	if exempt(method) {
		return true
	}
	need, ok := r[method]
	return ok && tok.Roles.grants(need)
}
