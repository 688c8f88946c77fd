package node

import (
	"errors"

	"github.com/hostscale/hostscale/internal/hostport"
)

// ParseControllers parses a comma-separated list of host:port addresses.
// Spaces around an entry are ignored and duplicates dropped; the list must
// name at least one controller.
func ParseControllers(s string) ([]string, error) {
	out, err := hostport.ParseList(s)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("must list at least one host:port")
	}
	return out, nil
}
