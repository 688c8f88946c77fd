package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime/trace"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Each traced write hands a byte to a sender goroutine, which writes it to
// a loopback connection whose far end echoes it back, reads the echo, and
// wakes the writer: the walk must follow the write through both
// goroutines and the network, both ways.
func TestCriticalPath_followsAWriteThroughGoroutinesAndTheNetwork(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := []byte{0}
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	reqs, dones := make(chan struct{}), make(chan error)
	go func() {
		b := []byte{1}
		for range reqs {
			_, err := c.Write(b)
			if err == nil {
				_, err = io.ReadFull(c, b)
			}
			dones <- err
		}
	}()
	defer close(reqs)

	const writes = 200
	var buf bytes.Buffer
	require.NoError(t, trace.Start(&buf))
	for range writes {
		region := trace.StartRegion(context.Background(), writeRegion)
		reqs <- struct{}{}
		err := <-dones
		region.End()
		if err != nil {
			trace.Stop()
			require.NoError(t, err)
		}
	}
	trace.Stop()

	st, err := criticalPath(&buf)
	require.NoError(t, err)
	require.Equal(t, writes-6, st.writes, "all but the first and last three")
	var sum, cpu time.Duration
	for p, d := range st.parts {
		sum += d
		if p == partRaft || p == partTransport || p == partHandlers || p == partForward || p == partClient || p == partOtherCPU {
			cpu += d
		}
	}
	require.InDelta(t, float64(st.mean), float64(sum), float64(time.Microsecond), "the parts add up to the write")
	require.Positive(t, cpu, "%v", st.parts)
	require.Positive(t, st.parts[partNetWrite], "%v", st.parts)
	require.Positive(t, st.parts[partNetWake], "%v", st.parts)
	require.Less(t, st.parts[partUnknown], st.mean/10, "%v", st.parts)
	t.Logf("%v", st.parts)

	var out strings.Builder
	reportPaths(&out, []result{{store: "wal", clients: 1, mode: "test", path: st}})
	require.Contains(t, out.String(), "network wake-up")
	require.Contains(t, out.String(), "test")
}

func TestCriticalPath_refusesATraceWithoutWrites(t *testing.T) {
	var buf bytes.Buffer
	require.NoError(t, trace.Start(&buf))
	trace.Stop()
	_, err := criticalPath(&buf)
	require.ErrorContains(t, err, "too few")

	_, err = criticalPath(strings.NewReader("not a trace"))
	require.Error(t, err)
}

func TestSyscallPart_namesTheCallByItsCaller(t *testing.T) {
	for frames, want := range map[string]pathPart{
		"syscall.Fsync internal/poll.(*FD).Fsync os.(*File).Sync":          partFsync,
		"syscall.Pwrite internal/poll.(*FD).Pwrite os.(*File).WriteAt":     partDiskWrite,
		"syscall.Write internal/poll.(*FD).Write net.(*netFD).Write":       partNetWrite,
		"syscall.Read internal/poll.(*FD).RawRead net.(*rawConn).Read":     partNetRead,
		"internal/runtime/syscall/linux.EpollWait runtime.netpoll":         partOtherSyscall,
		"syscall.Read internal/poll.(*FD).Read net.(*netFD).Read main.run": partNetRead,
	} {
		require.Equal(t, want, syscallPart(strings.Fields(frames)), frames)
	}
	require.Equal(t, partOtherSyscall, syscallPart(nil), "a call entered without a stack")
}
