package driver

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// start starts the command newCmd makes, inside id's group from its first
// instruction where it can: on cgroup v2 the process is cloned into the
// group (CLONE_INTO_CGROUP, Linux 5.7), so no child it forks at once can
// escape the limits. It reports whether it did; otherwise the process
// starts where the agent runs, and join must move it.
func (c *cgroups) start(id string, newCmd func() *exec.Cmd) (*exec.Cmd, bool, error) {
	if c.v2 {
		if dir, err := os.Open(filepath.Join(c.cpu, id)); err == nil {
			cmd := newCmd()
			if cmd.SysProcAttr == nil {
				cmd.SysProcAttr = &syscall.SysProcAttr{}
			}
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(dir.Fd())
			err := cmd.Start()
			dir.Close()
			if err == nil {
				return cmd, true, nil
			}
			// An older kernel refuses the flag; a command that cannot
			// start fails again below, with its own error.
		}
	}
	cmd := newCmd()
	return cmd, false, cmd.Start()
}
