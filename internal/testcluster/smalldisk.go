package testcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// SmallDisk is a file system of a fixed, small size (a tmpfs), for tests
// of what a process does when its disk fills up: Fill takes its space,
// Free gives it back.
type SmallDisk struct {
	// Dir is where it is mounted.
	Dir  string
	size int64
}

// NewSmallDisk mounts a tmpfs of size bytes, unmounted when the test ends
// (register it before anything that writes to it, so that those stop
// first). It needs root: without it the test is skipped, or fails under
// CI, which must run it.
func NewSmallDisk(t testing.TB, size int64) *SmallDisk {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "testcluster: a SmallDisk needs root to mount")
	}
	d := &SmallDisk{Dir: t.TempDir(), size: size}
	if err := syscall.Mount("hostscale-smalldisk", d.Dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV,
		fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		unavailable(t, "testcluster: mount a small disk: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(d.Dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("testcluster: unmount the small disk %s: %v", d.Dir, err)
		}
	})
	return d
}

// fillName is the file Fill writes.
const fillName = ".fill"

// Fill writes a file that leaves free bytes of the disk free (about: a
// tmpfs counts pages), on top of what the disk holds.
func (d *SmallDisk) Fill(free int64) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.Dir, &st); err != nil {
		return err
	}
	take := int64(st.Bavail)*st.Bsize - free
	if take <= 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(d.Dir, fillName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for take > 0 {
		n := min(take, int64(len(buf)))
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		take -= n
	}
	return f.Close()
}

// Free removes what Fill wrote.
func (d *SmallDisk) Free() error {
	err := os.Remove(filepath.Join(d.Dir, fillName))
	if os.IsNotExist(err) {
		return nil
	}
	return err
}

// FreeBytes is what the disk has free.
func (d *SmallDisk) FreeBytes() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(d.Dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}
