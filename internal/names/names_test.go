package names

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "0x", strings.Repeat("a", 63)} {
		require.NoError(t, Check(ok), ok)
	}
	for _, bad := range []string{"", "-a", "a-", "Web", "a_b", "a.b", strings.Repeat("a", 64)} {
		require.Error(t, Check(bad), bad)
	}
}

func TestFromHostname(t *testing.T) {
	for in, want := range map[string]string{
		"Web1.DC1.example.com":  "web1-dc1-example-com",
		"--x__y--":              "x-y",
		"...":                   "",
		strings.Repeat("a", 70): strings.Repeat("a", 63),
	} {
		got := FromHostname(in)
		require.Equal(t, want, got, in)
		if got != "" {
			require.NoError(t, Check(got))
		}
	}
}

func FuzzFromHostname(f *testing.F) {
	f.Add("web1.example.com")
	f.Fuzz(func(t *testing.T, s string) {
		if n := FromHostname(s); n != "" {
			require.NoError(t, Check(n))
		}
	})
}
