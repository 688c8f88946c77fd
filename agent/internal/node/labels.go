package node

import (
	"fmt"

	"github.com/hostscale/hostscale/internal/labels"
)

// MaxLabels is the most labels a node may have; controllers refuse a Hello
// with more.
const MaxLabels = 64

// ParseLabels parses "key=value,key=value" into a label set, with the
// rules the controllers check (Kubernetes' label grammar, see
// internal/labels): keys are an optional DNS-subdomain prefix and '/' and
// a name of at most 63 characters; values are empty or such a name; a key
// given twice is an error. An empty string gives an empty set.
func ParseLabels(s string) (map[string]string, error) {
	set, err := labels.ParseSet(s)
	if err != nil {
		return nil, err
	}
	if len(set) > MaxLabels {
		return nil, fmt.Errorf("at most %d labels, got %d", MaxLabels, len(set))
	}
	return set, nil
}
