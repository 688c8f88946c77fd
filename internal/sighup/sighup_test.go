package sighup

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hostscale/hostscale/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestReloads: a SIGHUP that comes after Notify and before Run neither
// ends the process nor is lost; each one then runs the reloads in order,
// skipping nil ones; once ctx ends, Run returns.
func TestReloads(t *testing.T) {
	r := Notify()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGHUP))

	var mu sync.Mutex
	var calls []string
	record := func(name string) func() {
		return func() {
			mu.Lock()
			calls = append(calls, name)
			mu.Unlock()
		}
	}
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), calls...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, slog.New(slog.DiscardHandler), record("tls"), nil, record("acl"))
	}()
	require.Eventually(t, func() bool { return len(got()) == 2 }, 5*time.Second, 5*time.Millisecond, "the SIGHUP sent before Run")
	require.Equal(t, []string{"tls", "acl"}, got())

	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return len(got()) == 4 }, 5*time.Second, 5*time.Millisecond, "a SIGHUP during Run")
	require.Equal(t, []string{"tls", "acl", "tls", "acl"}, got())

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return once its context ended")
	}
}

// TestReloads_nothingToReload logs that a SIGHUP reloads nothing.
func TestReloads_nothingToReload(t *testing.T) {
	r := Notify()
	var logs syncbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, slog.New(slog.NewTextHandler(&logs, nil)), nil)
	}()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "SIGHUP: nothing to reload") }, 5*time.Second, 5*time.Millisecond)
	cancel()
	<-done
}
