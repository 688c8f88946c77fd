// Package hostport parses the host:port addresses and address lists that
// hostscale binaries take in flags such as -controllers.
package hostport

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Check reports why a is not host:port with a host and a port from 1 to
// 65535.
func Check(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q: expected host:port", a)
	}
	if host == "" {
		return fmt.Errorf("%q: missing host", a)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%q: port must be 1-65535", a)
	}
	return nil
}

// ParseList parses a comma-separated list of host:port addresses. Spaces
// around an entry are ignored and duplicates dropped; an empty list is not
// an error.
func ParseList(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if err := Check(a); err != nil {
			return nil, err
		}
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out, nil
}
