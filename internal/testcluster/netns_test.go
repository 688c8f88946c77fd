package testcluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// netHelper runs the test binary as a helper inside a Net host when
// TESTCLUSTER_NET_HELPER says so: "listen ADDR" accepts connections on
// ADDR and writes "hello" to each until its standard input closes; "dial
// ADDR" prints what one connection to ADDR read within a second, or why
// it read nothing.
func netHelper() bool {
	verb, addr, ok := strings.Cut(os.Getenv("TESTCLUSTER_NET_HELPER"), " ")
	if !ok {
		return false
	}
	switch verb {
	case "listen":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		fmt.Println("listening")
		go serveHello(l)
		_, _ = io.Copy(io.Discard, os.Stdin)
	case "dial":
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				fmt.Println("timeout")
			} else {
				fmt.Println("error:", err)
			}
			return true
		}
		b, _ := io.ReadAll(c)
		fmt.Println(string(b))
	}
	return true
}

// serveHello writes "hello" to every connection l accepts, until l closes.
func serveHello(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Write([]byte("hello"))
		c.Close()
	}
}

func helper(t *testing.T, h *Host, verb, addr string) *exec.Cmd {
	self, err := os.Executable()
	require.NoError(t, err)
	cmd := h.Command(self)
	// Without the race detector's second asleep at exit.
	cmd.Env = append(os.Environ(), "TESTCLUSTER_NET_HELPER="+verb+" "+addr, "GORACE=atexit_sleep_ms=0")
	return cmd
}

// TestNet_partitionDropsPacketsBetweenGroupsAndHealRestoresThem: hosts
// reach each other and the test process reaches them; across a partition
// a connection times out (dropped, not refused) while hosts on the same
// side and the test process still connect; healed, all connect again.
func TestNet_partitionDropsPacketsBetweenGroupsAndHealRestoresThem(t *testing.T) {
	nt := NewNet(t, 3)
	hs := nt.Hosts()
	require.Len(t, hs, 3)
	addr := func(h *Host) string { return h.IP + ":9000" }
	for _, h := range hs {
		cmd := helper(t, h, "listen", addr(h))
		in, err := cmd.StdinPipe()
		require.NoError(t, err)
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { in.Close(); _ = cmd.Wait() })
		line, err := bufio.NewReader(out).ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, "listening\n", line, "%s", h.Name)
	}
	dial := func(from, to *Host) string {
		out, err := helper(t, from, "dial", addr(to)).Output()
		require.NoError(t, err)
		return strings.TrimSpace(string(out))
	}
	fromTest := func(to *Host) error {
		c, err := net.DialTimeout("tcp", addr(to), time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, a := range hs {
		require.NoError(t, fromTest(a))
		for _, b := range hs {
			if a != b {
				require.Equal(t, "hello", dial(a, b), "%s to %s", a.Name, b.Name)
			}
		}
	}

	nt.Isolate(hs[0])
	require.True(t, nt.Cut(hs[0], hs[1]))
	require.False(t, nt.Cut(hs[1], hs[2]))
	require.Equal(t, "timeout", dial(hs[0], hs[1]))
	require.Equal(t, "timeout", dial(hs[2], hs[0]))
	require.Equal(t, "hello", dial(hs[1], hs[2]))
	for _, h := range hs {
		require.NoError(t, fromTest(h), "the test process reaches %s across the partition", h.Name)
	}
	// And every host reaches the test process.
	l, err := net.Listen("tcp", nt.Addr()+":0")
	require.NoError(t, err)
	defer l.Close()
	go serveHello(l)
	out, err := helper(t, hs[0], "dial", l.Addr().String()).Output()
	require.NoError(t, err)
	require.Equal(t, "hello", strings.TrimSpace(string(out)), "a cut-off host reaches the test process")

	// A new partition replaces the old one.
	nt.Partition([]*Host{hs[0], hs[1]}, []*Host{hs[2]})
	require.Equal(t, "hello", dial(hs[0], hs[1]))
	require.Equal(t, "timeout", dial(hs[1], hs[2]))

	nt.Heal()
	require.False(t, nt.Cut(hs[1], hs[2]))
	require.Equal(t, "hello", dial(hs[1], hs[2]))
	require.Equal(t, "hello", dial(hs[0], hs[2]))
}

// TestNet_removedWhenTheTestEnds: the namespaces are gone after cleanup.
func TestNet_removedWhenTheTestEnds(t *testing.T) {
	var names []string
	t.Run("make", func(t *testing.T) {
		nt := NewNet(t, 2)
		for _, h := range nt.Hosts() {
			names = append(names, h.Name)
		}
		names = append(names, nt.hub)
	})
	if len(names) == 0 {
		t.Skip("no Net here")
	}
	out, err := exec.Command(ipPath, "netns", "list").Output()
	require.NoError(t, err)
	for _, n := range names {
		require.NotContains(t, string(out), n)
	}
}
