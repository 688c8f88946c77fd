package balancer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrStaleVersion is returned by Apply for a table older than the one in force.
var ErrStaleVersion = errors.New("balancer: table version older than the applied one")

// ErrInvalidTable wraps every consistency error found by Table.Validate.
var ErrInvalidTable = errors.New("balancer: invalid table")

// Version stamps a table with the Raft term and index it was produced at.
// Versions compare index first, then term.
type Version struct {
	Term  uint64 `json:"term"`
	Index uint64 `json:"index"`
}

// Compare returns -1, 0 or +1 as v is older than, equal to or newer than o.
func (v Version) Compare(o Version) int {
	switch {
	case v.Index < o.Index:
		return -1
	case v.Index > o.Index:
		return 1
	case v.Term < o.Term:
		return -1
	case v.Term > o.Term:
		return 1
	}
	return 0
}

// String formats v as "term/index".
func (v Version) String() string { return fmt.Sprintf("%d/%d", v.Term, v.Index) }

// Policy names a load-balancing policy.
type Policy string

// Policies. The empty policy means PolicyLeastRequest.
const (
	// PolicyLeastRequest picks the less loaded of two random backends
	// (power of two choices), weighing in-flight requests by weight.
	PolicyLeastRequest Policy = "least_request"
	// PolicyRoundRobin cycles through backends in proportion to their weights
	// (smooth weighted round robin).
	PolicyRoundRobin Policy = "round_robin"
)

// Table is a versioned snapshot of routes and backends. A table handed to Apply
// is copied; the balancer never mutates it, and callers must not rely on later
// changes to it having any effect.
type Table struct {
	Version Version `json:"version"`
	Pools   []Pool  `json:"pools"`
}

// Pool is a set of backends serving one route: requests whose Host matches one
// of Hosts and whose path starts with PathPrefix.
type Pool struct {
	// Name identifies the pool; DNS-label syntax, unique in a table.
	Name string `json:"name"`
	// Hosts are exact host names ("example.com"), suffix wildcards
	// ("*.example.com") or "*" for any host. Matching ignores case and port.
	Hosts []string `json:"hosts"`
	// PathPrefix selects requests whose path starts with it at a segment
	// boundary ("/api" matches "/api" and "/api/x", not "/apix"). Empty means "/".
	PathPrefix string    `json:"path_prefix,omitempty"`
	Policy     Policy    `json:"policy,omitempty"`
	Backends   []Backend `json:"backends"`
	// HoldWhenEmpty is how long a request routed to the pool waits for a
	// backend while the pool has none that can take it (no backend, or only
	// draining ones): a pool scaled to zero gets the time to start an
	// instance and the balancer a table that names it. The request is then
	// answered 503. Zero answers 503 at once; at most MaxHoldWhenEmpty. The
	// table file spells it as a duration string ("hold_when_empty": "30s"),
	// which DecodeTable and WriteTableFile handle.
	HoldWhenEmpty time.Duration `json:"-"`
	// HTTPSRedirect answers a request that came over plain HTTP with 308
	// Permanent Redirect to the same URL over https; a request over TLS,
	// or from a trusted proxy that says X-Forwarded-Proto: https, is
	// proxied.
	HTTPSRedirect bool `json:"https_redirect,omitempty"`
}

// MaxHoldWhenEmpty is the longest Pool.HoldWhenEmpty.
const MaxHoldWhenEmpty = 5 * time.Minute

// Backend is one upstream instance of a pool.
type Backend struct {
	// Address is host:port of the backend; the host must be an IP address.
	Address string `json:"address"`
	// Weight is the relative share of requests, 1..10000; 0 means 1.
	Weight int `json:"weight,omitempty"`
	// Draining backends take no new requests; requests in flight complete.
	Draining bool `json:"draining,omitempty"`
}

// MaxWeight is the largest backend weight.
const MaxWeight = 10000

// Clone returns a deep copy of t.
func (t *Table) Clone() *Table {
	if t == nil {
		return nil
	}
	c := &Table{Version: t.Version, Pools: make([]Pool, len(t.Pools))}
	for i, p := range t.Pools {
		p.Hosts = append([]string(nil), p.Hosts...)
		p.Backends = append([]Backend(nil), p.Backends...)
		c.Pools[i] = p
	}
	return c
}

// Validate checks the table's consistency: pool names, hosts, prefixes,
// policies, hold times, backend addresses and weights, and that no two pools claim the same
// route. Errors wrap ErrInvalidTable and name the field ("pools[1].backends[0].address").
func (t *Table) Validate() error {
	if t == nil {
		return fmt.Errorf("%w: nil table", ErrInvalidTable)
	}
	names := make(map[string]int, len(t.Pools))
	routes := make(map[string]string)
	for i := range t.Pools {
		p := &t.Pools[i]
		f := func(field, format string, a ...any) error {
			return fmt.Errorf("%w: pools[%d]%s: %s", ErrInvalidTable, i, field, fmt.Sprintf(format, a...))
		}
		if !isDNSLabel(p.Name) {
			return f(".name", "%q is not a DNS label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 chars)", p.Name)
		}
		if j, ok := names[p.Name]; ok {
			return f(".name", "%q already used by pools[%d]", p.Name, j)
		}
		names[p.Name] = i
		switch p.Policy {
		case "", PolicyLeastRequest, PolicyRoundRobin:
		default:
			return f(".policy", "%q is not %q or %q", p.Policy, PolicyLeastRequest, PolicyRoundRobin)
		}
		if p.HoldWhenEmpty < 0 || p.HoldWhenEmpty > MaxHoldWhenEmpty {
			return f(".hold_when_empty", "%v is outside 0..%v", p.HoldWhenEmpty, MaxHoldWhenEmpty)
		}
		prefix := p.PathPrefix
		if prefix == "" {
			prefix = "/"
		}
		if prefix[0] != '/' || strings.ContainsAny(prefix, "?# \t\r\n") {
			return f(".path_prefix", "%q must start with / and hold no query, fragment or whitespace", p.PathPrefix)
		}
		if len(p.Hosts) == 0 {
			return f(".hosts", "empty (use \"*\" to match any host)")
		}
		for j, h := range p.Hosts {
			if !validHostPattern(h) {
				return f(fmt.Sprintf(".hosts[%d]", j), "%q is not a host name, \"*.suffix\" or \"*\"", h)
			}
			key := strings.ToLower(h) + " " + normPrefix(prefix)
			if other, ok := routes[key]; ok {
				return f(fmt.Sprintf(".hosts[%d]", j), "route %s%s already served by pool %q", h, prefix, other)
			}
			routes[key] = p.Name
		}
		addrs := make(map[string]int, len(p.Backends))
		for j, b := range p.Backends {
			bf := fmt.Sprintf(".backends[%d]", j)
			if err := validAddress(b.Address); err != nil {
				return f(bf+".address", "%q: %v", b.Address, err)
			}
			if k, ok := addrs[b.Address]; ok {
				return f(bf+".address", "%q duplicates backends[%d]", b.Address, k)
			}
			addrs[b.Address] = j
			if b.Weight < 0 || b.Weight > MaxWeight {
				return f(bf+".weight", "%d is outside 0..%d", b.Weight, MaxWeight)
			}
		}
	}
	return nil
}

func normPrefix(p string) string {
	if len(p) > 1 {
		return strings.TrimSuffix(p, "/")
	}
	return p
}

func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

func validHostPattern(h string) bool {
	if h == "*" {
		return true
	}
	h = strings.TrimPrefix(h, "*.")
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return true
	}
	for _, label := range strings.Split(h, ".") {
		if len(label) == 0 || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i] | 0x20
			if !(c >= 'a' && c <= 'z' || label[i] >= '0' && label[i] <= '9' || label[i] == '-' || label[i] == '_') {
				return false
			}
		}
	}
	return true
}

func validAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("not host:port")
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return errors.New("host is not an IP address")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return errors.New("port is not 1..65535")
	}
	return nil
}
