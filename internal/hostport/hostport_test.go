package hostport

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseList(t *testing.T) {
	got, err := ParseList(" 127.0.0.1:7700, c2:7700 ,127.0.0.1:7700,,[::1]:7700")
	require.NoError(t, err)
	require.Equal(t, []string{"127.0.0.1:7700", "c2:7700", "[::1]:7700"}, got)
	got, err = ParseList("")
	require.NoError(t, err)
	require.Empty(t, got)
	for _, bad := range []string{"nohost", ":7700", "a:0", "a:70000", "a:x", "a:1,b"} {
		_, err := ParseList(bad)
		require.Error(t, err, bad)
	}
}
