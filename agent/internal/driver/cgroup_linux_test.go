package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestCgroups_v2ProcessIsBornInItsGroup mounts a cgroup v2 hierarchy (it
// needs no controller for this) and starts a process that reads its own
// cgroup as its first act: it is in its group already, not moved there
// after the start. Skipped where the test may not mount one.
func TestCgroups_v2ProcessIsBornInItsGroup(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("none", mnt, "cgroup2", 0, ""); err != nil {
		t.Skipf("cannot mount a cgroup v2 hierarchy here: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(mnt, syscall.MNT_DETACH) })
	parent := filepath.Join(mnt, "hostscale-test-"+strings.ReplaceAll(t.Name(), "/", "-"))
	require.NoError(t, os.MkdirAll(filepath.Join(parent, "web-1"), 0o755))
	t.Cleanup(func() {
		_ = os.Remove(filepath.Join(parent, "web-1"))
		_ = os.Remove(parent)
	})
	c := &cgroups{v2: true, cpu: parent, memory: parent}

	outPath := filepath.Join(t.TempDir(), "out")
	out, err := os.Create(outPath)
	require.NoError(t, err)
	defer out.Close()
	cmd, born, err := c.start("web-1", func() *exec.Cmd {
		cmd := exec.Command("/bin/cat", "/proc/self/cgroup")
		cmd.Stdout = out
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		return cmd
	})
	require.NoError(t, err)
	require.True(t, born, "cloned into its group")
	require.NoError(t, cmd.Wait())
	b, err := os.ReadFile(outPath)
	require.NoError(t, err)
	// The v2 hierarchy's line ("0::/path"), relative to the mount.
	rel, err := filepath.Rel(mnt, filepath.Join(parent, "web-1"))
	require.NoError(t, err)
	require.Contains(t, strings.Split(strings.TrimSpace(string(b)), "\n"), "0::/"+rel)

	// Without a group to clone into, or with one the kernel refuses (here
	// a plain directory, as an older kernel refuses the flag), the process
	// starts as elsewhere and is not born in one.
	plain := &cgroups{v2: true, cpu: t.TempDir()}
	require.NoError(t, os.Mkdir(filepath.Join(plain.cpu, "web-1"), 0o755))
	for _, tc := range []struct {
		c  *cgroups
		id string
	}{{c, "gone"}, {plain, "web-1"}} {
		cmd, born, err := tc.c.start(tc.id, func() *exec.Cmd { return exec.Command("/bin/true") })
		require.NoError(t, err, tc.id)
		require.False(t, born, tc.id)
		require.NoError(t, cmd.Wait())
	}
	// A command that cannot start fails with its own error.
	_, _, err = c.start("web-1", func() *exec.Cmd { return exec.Command(filepath.Join(t.TempDir(), "missing")) })
	require.ErrorIs(t, err, os.ErrNotExist)
}
