package node

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// ParseControllers parses a comma-separated list of host:port addresses.
// Spaces around an entry are ignored and duplicates dropped; the list must
// name at least one controller.
func ParseControllers(s string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("%q: expected host:port", a)
		}
		if host == "" {
			return nil, fmt.Errorf("%q: missing host", a)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return nil, fmt.Errorf("%q: port must be 1-65535", a)
		}
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("must list at least one host:port")
	}
	return out, nil
}
