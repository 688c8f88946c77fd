package balancer

import (
	"bytes"
	"sort"
	"strings"
)

type route struct {
	prefix string
	pool   *poolSnap
}

// router maps a request's host and path to a pool. Exact hosts win over
// wildcard suffixes ("*.example.com"), which win over "*"; within a host the
// longest matching path prefix wins. Immutable once built.
type router struct {
	exact  map[string][]route
	suffix map[string][]route // key starts with '.'
	any    []route
}

func newRouter() *router {
	return &router{exact: map[string][]route{}, suffix: map[string][]route{}}
}

func (r *router) add(host, prefix string, ps *poolSnap) {
	host = strings.ToLower(host)
	rt := route{prefix: prefix, pool: ps}
	switch {
	case host == "*":
		r.any = append(r.any, rt)
	case strings.HasPrefix(host, "*."):
		r.suffix[host[1:]] = append(r.suffix[host[1:]], rt)
	default:
		r.exact[host] = append(r.exact[host], rt)
	}
}

func (r *router) finish() {
	byLen := func(rs []route) {
		sort.SliceStable(rs, func(i, j int) bool { return len(rs[i].prefix) > len(rs[j].prefix) })
	}
	for _, rs := range r.exact {
		byLen(rs)
	}
	for _, rs := range r.suffix {
		byLen(rs)
	}
	byLen(r.any)
}

// lookup returns the pool for host (a Host header value, port allowed) and
// target (a request target), or nil.
func (r *router) lookup(host, target []byte) *poolSnap {
	path := target
	if i := bytes.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	var buf [256]byte
	h, ok := normHost(host, buf[:0])
	if ok {
		if ps := matchPrefix(r.exact[string(h)], path); ps != nil {
			return ps
		}
		if len(r.suffix) > 0 {
			for i := 0; i < len(h); i++ {
				if h[i] == '.' {
					if ps := matchPrefix(r.suffix[string(h[i:])], path); ps != nil {
						return ps
					}
				}
			}
		}
	}
	return matchPrefix(r.any, path)
}

func matchPrefix(rs []route, path []byte) *poolSnap {
	for i := range rs {
		if pathHasPrefix(path, rs[i].prefix) {
			return rs[i].pool
		}
	}
	return nil
}

func pathHasPrefix(path []byte, prefix string) bool {
	if len(path) < len(prefix) || string(path[:len(prefix)]) != prefix {
		return false
	}
	return len(path) == len(prefix) || prefix[len(prefix)-1] == '/' || path[len(prefix)] == '/'
}

// normHost lowercases host and strips its port into dst.
func normHost(host []byte, dst []byte) ([]byte, bool) {
	if len(host) > 0 && host[0] == '[' {
		i := bytes.IndexByte(host, ']')
		if i < 0 {
			return nil, false
		}
		host = host[:i+1]
	} else if i := bytes.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	if len(host) > cap(dst) {
		return nil, false
	}
	for _, c := range host {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	// A fully qualified name may end with a dot.
	if len(dst) > 0 && dst[len(dst)-1] == '.' {
		dst = dst[:len(dst)-1]
	}
	return dst, true
}
