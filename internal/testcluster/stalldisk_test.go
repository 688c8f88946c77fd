package testcluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A StallDisk passes writes and syncs through until Stall; then they wait,
// and Resume lets them finish, nothing lost. The writes come from another
// process, as they do in the tests that use it: a test process must not
// wait on the disk it serves.
func TestStallDisk_holdsWritesAndSyncsUntilResumed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := NewStallDisk(t)
	log := filepath.Join(d.Dir, "log")
	write := func(line string) *exec.Cmd {
		// dd's conv=fsync syncs the file before it exits.
		cmd := exec.CommandContext(ctx, "dd", "of="+log, "oflag=append", "conv=notrunc,fsync", "status=none")
		cmd.Stdin = stringsReader(line)
		return cmd
	}
	require.NoError(t, write("one\n").Run())

	d.Stall()
	cmd := write("two\n")
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	require.NoError(t, d.WaitHeld(ctx, 5*time.Second))
	select {
	case err := <-done:
		t.Fatalf("the write returned while the disk was stalled: %v", err)
	default:
	}
	backing, err := os.ReadFile(filepath.Join(d.backing, "log"))
	require.NoError(t, err)
	require.Equal(t, "one\n", string(backing), "what reached the disk underneath")

	d.Resume()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("the held write did not finish after Resume")
	}
	require.Zero(t, d.Held())
	backing, err = os.ReadFile(filepath.Join(d.backing, "log"))
	require.NoError(t, err)
	require.Equal(t, "one\ntwo\n", string(backing))
}

func stringsReader(s string) *os.File {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	go func() {
		_, _ = w.WriteString(s)
		w.Close()
	}()
	return r
}

// Fail makes writes and syncs fail with its error, in another process,
// and nothing reaches the directory underneath; Resume ends it.
func TestStallDisk_failsWritesUntilResumed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := NewStallDisk(t)
	log := filepath.Join(d.Dir, "log")
	write := func(line string) (string, error) {
		cmd := exec.CommandContext(ctx, "dd", "of="+log, "oflag=append", "conv=notrunc,fsync", "status=none")
		cmd.Stdin = stringsReader(line)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	_, err := write("one\n")
	require.NoError(t, err)

	d.Fail(syscall.EIO)
	out, err := write("two\n")
	require.Error(t, err)
	require.Contains(t, out, "Input/output error")
	backing, err := os.ReadFile(filepath.Join(d.backing, "log"))
	require.NoError(t, err)
	require.Equal(t, "one\n", string(backing), "what reached the disk underneath")

	d.Resume()
	_, err = write("three\n")
	require.NoError(t, err)
	backing, err = os.ReadFile(filepath.Join(d.backing, "log"))
	require.NoError(t, err)
	require.Equal(t, "one\nthree\n", string(backing))
}

func TestSmallDisk_fillsAndFrees(t *testing.T) {
	d := NewSmallDisk(t, 8<<20)
	free, err := d.FreeBytes()
	require.NoError(t, err)
	require.InDelta(t, 8<<20, free, 64<<10, "a new small disk is empty")
	require.NoError(t, d.Fill(1<<20))
	free, err = d.FreeBytes()
	require.NoError(t, err)
	require.InDelta(t, 1<<20, free, 64<<10)
	// Beyond its size, a write fails as on a full disk.
	err = os.WriteFile(filepath.Join(d.Dir, "big"), make([]byte, 2<<20), 0o644)
	require.ErrorIs(t, err, syscall.ENOSPC)
	require.NoError(t, os.Remove(filepath.Join(d.Dir, "big")))
	require.NoError(t, d.Free())
	free, err = d.FreeBytes()
	require.NoError(t, err)
	require.InDelta(t, 8<<20, free, 64<<10)
	require.NoError(t, d.Free(), "freeing twice is no error")
}
