// Package names checks and makes the names hostscale gives nodes,
// balancers and other resources: DNS labels (RFC 1123).
package names

import (
	"errors"
	"fmt"
	"strings"
)

// MaxLength is the longest name: the length of a DNS label.
const MaxLength = 63

// Check reports why s is not a DNS label: 1 to 63 lowercase letters,
// digits and '-', starting and ending with a letter or digit.
func Check(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	if len(s) > MaxLength {
		return fmt.Errorf("%q is longer than %d characters", s, MaxLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return fmt.Errorf("%q is not a DNS label (lowercase letters, digits and '-', starting and ending with a letter or digit)", s)
		}
	}
	return nil
}

// FromHostname turns a host name into a DNS label: lowercased, every run of
// other characters (dots included, so that web1.dc1 and web1.dc2 stay
// apart) replaced by one '-', trimmed of '-' at both ends and cut to 63
// characters. It returns "" when nothing usable is left.
func FromHostname(hostname string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(hostname) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	name := strings.TrimRight(b.String(), "-")
	if len(name) > MaxLength {
		name = strings.TrimRight(name[:MaxLength], "-")
	}
	return name
}
