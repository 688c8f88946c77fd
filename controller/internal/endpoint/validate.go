package endpoint

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/hostscale/hostscale/internal/hostport"
	"github.com/hostscale/hostscale/internal/names"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// checkName checks a resource name: a DNS label of at most 63 characters.
func checkName(field, name string) error {
	if err := names.Check(name); err != nil {
		return invalid(field, "%v", err)
	}
	return nil
}

// checkAddress checks a host:port address with a port from 1 to 65535.
func checkAddress(field, addr string) error {
	if addr == "" {
		return invalid(field, "must not be empty")
	}
	if err := hostport.Check(addr); err != nil {
		return invalid(field, "%v", err)
	}
	if host, _, _ := net.SplitHostPort(addr); len(host) > 253 || strings.ContainsAny(host, " /\t\r\n") {
		return invalid(field, "%q has no valid host", addr)
	}
	return nil
}

// checkHost checks a virtual host: a DNS name, optionally starting "*.".
func checkHost(field, h string) error {
	name := strings.TrimPrefix(h, "*.")
	if name == "" || len(h) > 253 {
		return invalid(field, "%q is not a host name", h)
	}
	for _, l := range strings.Split(name, ".") {
		if names.Check(l) != nil {
			return invalid(field, "%q is not a lowercase host name (a wildcard may only lead: *.example.com)", h)
		}
	}
	return nil
}

// DefaultWeight is a backend's weight when none is given.
const DefaultWeight = 100

// MaxWeight bounds a backend's weight.
const MaxWeight = 1000

func checkBackend(field string, b *pb.Backend) error {
	if b == nil {
		return invalid(field, "must be set")
	}
	if err := checkAddress(field+".address", b.Address); err != nil {
		return err
	}
	// Balancers dial what the table says and resolve no names: a backend
	// is a literal IP address.
	if host, _, _ := net.SplitHostPort(b.Address); !isIP(host) {
		return invalid(field+".address", "%q: the host must be an IP address", b.Address)
	}
	if b.Weight > MaxWeight {
		return invalid(field+".weight", "at most %d, got %d", MaxWeight, b.Weight)
	}
	return nil
}

// normalizePool validates a pool from a request and fills its defaults.
func normalizePool(p *pb.Pool) error {
	if p == nil {
		return invalid("pool", "must be set")
	}
	if err := checkName("pool.name", p.Name); err != nil {
		return err
	}
	seenHost := map[string]bool{}
	for i, h := range p.Hosts {
		f := fmt.Sprintf("pool.hosts[%d]", i)
		h = strings.ToLower(h)
		if err := checkHost(f, h); err != nil {
			return err
		}
		if seenHost[h] {
			return invalid(f, "%q is listed twice", h)
		}
		seenHost[h] = true
		p.Hosts[i] = h
	}
	if p.PathPrefix == "" {
		p.PathPrefix = "/"
	}
	if !strings.HasPrefix(p.PathPrefix, "/") || len(p.PathPrefix) > 1024 || strings.ContainsAny(p.PathPrefix, " ?#\t\r\n") {
		return invalid("pool.path_prefix", "%q must start with '/' and hold no spaces, '?' or '#'", p.PathPrefix)
	}
	// Prefixes match whole path segments: "/api/" and "/api" are one route.
	if trimmed := strings.TrimRight(p.PathPrefix, "/"); trimmed != "" {
		p.PathPrefix = trimmed
	} else {
		p.PathPrefix = "/"
	}
	switch p.Policy {
	case pb.Policy_POLICY_UNSPECIFIED:
		p.Policy = pb.Policy_POLICY_LEAST_REQUEST
	case pb.Policy_POLICY_LEAST_REQUEST, pb.Policy_POLICY_ROUND_ROBIN:
	default:
		return invalid("pool.policy", "unknown policy %d", p.Policy)
	}
	seen := map[string]bool{}
	for i, b := range p.Backends {
		f := fmt.Sprintf("pool.backends[%d]", i)
		if err := checkBackend(f, b); err != nil {
			return err
		}
		if seen[strings.ToLower(b.Address)] {
			return invalid(f+".address", "%q is listed twice", b.Address)
		}
		seen[strings.ToLower(b.Address)] = true
		if b.Weight == 0 {
			b.Weight = DefaultWeight
		}
	}
	p.CreateIndex, p.ModifyIndex = 0, 0
	return normalizeInstances(p)
}

func isIP(host string) bool {
	_, err := netip.ParseAddr(host)
	return err == nil
}
