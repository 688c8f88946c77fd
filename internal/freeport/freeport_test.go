package freeport

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func port(t *testing.T, l net.Listener) int {
	t.Helper()
	_, p, err := net.SplitHostPort(l.Addr().String())
	require.NoError(t, err)
	n, err := strconv.Atoi(p)
	require.NoError(t, err)
	return n
}

// withRange points Listen at a range file holding content.
func withRange(t *testing.T, content string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "range")
	require.NoError(t, os.WriteFile(f, []byte(content), 0o600))
	old := rangeFile
	rangeFile = f
	t.Cleanup(func() { rangeFile = old })
}

func TestListen_belowTheEphemeralRangeAndFreeAgainOnceClosed(t *testing.T) {
	withRange(t, "32768\t60999\n")
	seen := map[int]bool{}
	for range 20 {
		l, err := Listen()
		require.NoError(t, err)
		defer l.Close()
		p := port(t, l)
		require.GreaterOrEqual(t, p, lowest)
		require.Less(t, p, 32768)
		require.False(t, seen[p], "port %d handed out twice while open", p)
		seen[p] = true
	}
	l, err := Listen()
	require.NoError(t, err)
	addr := l.Addr().String()
	_, err = Relisten(addr, 50*time.Millisecond)
	require.Error(t, err, "a port still open cannot be bound again")
	require.NoError(t, l.Close())
	again, err := Relisten(addr, time.Second)
	require.NoError(t, err, "a closed port can be bound again")
	require.Equal(t, addr, again.Addr().String())
	again.Close()
}

func TestListen_kernelChosenOnlyWhenTheRangeLeavesNoRoom(t *testing.T) {
	for _, content := range []string{"10500 60999", "", "garbage"} {
		withRange(t, content)
		l, err := Listen()
		require.NoError(t, err, "range %q", content)
		p := port(t, l)
		l.Close()
		if content == "10500 60999" {
			require.GreaterOrEqual(t, p, 10500, "no room below: the kernel's own choice")
		} else {
			require.Less(t, p, 32768, "an unreadable range is taken as Linux's default")
		}
	}
}
