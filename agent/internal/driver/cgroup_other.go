//go:build !linux

package driver

import "os/exec"

// start starts the command newCmd makes; join moves it into its group.
func (c *cgroups) start(_ string, newCmd func() *exec.Cmd) (*exec.Cmd, bool, error) {
	cmd := newCmd()
	return cmd, false, cmd.Start()
}
