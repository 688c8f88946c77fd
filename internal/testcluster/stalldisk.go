package testcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// StallDisk is a directory whose writes and syncs can be held, as a disk
// that stops answering (a cloud volume's stall, a dying drive) holds them:
// the process writing waits in its system call. They can also be made to
// fail (Fail), as on a disk that answers with errors. It is a FUSE mount of a
// temporary directory, served by the test process, so that processes
// started by the test, in a Net host or not, use it as their data
// directory.
type StallDisk struct {
	// Dir is the mount point.
	Dir string
	// backing is the directory underneath.
	backing string

	mu      sync.Mutex
	stalled bool
	resume  chan struct{}
	held    int
	// failing, when not zero, is what every write, sync and allocation
	// fails with.
	failing syscall.Errno
	server  *fuse.Server
}

// NewStallDisk mounts a StallDisk, unmounted when the test ends (register
// it before anything that writes to it, so that those stop first). It
// needs /dev/fuse and root: without them the test is skipped, or fails
// under CI, which must run it.
func NewStallDisk(t testing.TB) *StallDisk {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "testcluster: a StallDisk needs root to mount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		unavailable(t, "testcluster: a StallDisk needs /dev/fuse: %v", err)
	}
	backing, mnt := t.TempDir(), t.TempDir()
	d := &StallDisk{Dir: mnt, backing: backing}
	lroot, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		t.Fatalf("testcluster: stall disk: %v", err)
	}
	root := &stallNode{LoopbackNode: lroot.(*fs.LoopbackNode), disk: d}
	d.server, err = fs.Mount(mnt, root, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMount: true,
		FsName:      "hostscale-stalldisk",
		Name:        "stalldisk",
	}})
	if err != nil {
		unavailable(t, "testcluster: mount a stall disk: %v", err)
	}
	t.Cleanup(func() {
		d.Resume()
		done := make(chan error, 1)
		go func() {
			err := d.server.Unmount()
			if err == nil {
				// The serving goroutines end once the kernel has let go.
				d.server.Wait()
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				return
			}
			t.Logf("testcluster: unmount %s: %v", mnt, err)
		case <-time.After(10 * time.Second):
			t.Logf("testcluster: unmount %s: still in use after 10 s", mnt)
		}
		// A process still has a file open on it: detach the mount, so
		// that the directory can go, and end the calls still served.
		_ = exec.Command("umount", "-l", mnt).Run()
	})
	return d
}

// unavailable skips a test this machine cannot run, or fails it when $CI
// is set, so that a CI run never passes by skipping.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// Stall holds every write and sync from now on until Resume.
func (d *StallDisk) Stall() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.stalled {
		d.stalled, d.resume = true, make(chan struct{})
	}
}

// Fail makes every write, sync and allocation from now on fail with
// errno until Resume, as a dying disk (EIO), a full one (ENOSPC) or a
// file system remounted read-only after errors (EROFS) does. Writes held
// by Stall stay held.
func (d *StallDisk) Fail(errno syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failing = errno
}

// Resume lets the held writes and syncs through, and those to come, and
// ends Fail.
func (d *StallDisk) Resume() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failing = 0
	if d.stalled {
		d.stalled = false
		close(d.resume)
	}
}

// Held reports how many writes and syncs wait for Resume.
func (d *StallDisk) Held() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.held
}

// WaitHeld waits until at least one write or sync is held, or timeout.
func (d *StallDisk) WaitHeld(ctx context.Context, timeout time.Duration) error {
	return Eventually(ctx, timeout, func(context.Context) error {
		if d.Held() == 0 {
			return fmt.Errorf("no write held on %s", d.Dir)
		}
		return nil
	})
}

// gate holds the caller while the disk is stalled; then it returns the
// error the call must fail with, if any.
func (d *StallDisk) gate() syscall.Errno {
	d.mu.Lock()
	if !d.stalled {
		defer d.mu.Unlock()
		return d.failing
	}
	resume := d.resume
	d.held++
	d.mu.Unlock()
	<-resume
	d.mu.Lock()
	defer d.mu.Unlock()
	d.held--
	return d.failing
}

// stallNode is a loopback node whose writes and syncs pass the disk's gate.
type stallNode struct {
	*fs.LoopbackNode
	disk *StallDisk
}

var (
	_ fs.NodeWrapChilder = (*stallNode)(nil)
	_ fs.NodeWriter      = (*stallNode)(nil)
	_ fs.NodeWritever    = (*stallNode)(nil)
	_ fs.NodeFsyncer     = (*stallNode)(nil)
	_ fs.NodeAllocater   = (*stallNode)(nil)
	_ fs.NodeOpener      = (*stallNode)(nil)
	_ fs.NodeCreater     = (*stallNode)(nil)
)

func (n *stallNode) WrapChild(_ context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &stallNode{LoopbackNode: ops.(*fs.LoopbackNode), disk: n.disk}
}

// Open and Create hand out files the kernel may not bypass: FUSE
// passthrough would send writes straight to the file underneath.
func (n *stallNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return noPassthrough(fh), fl, errno
}

func (n *stallNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, noPassthrough(fh), fl, errno
}

func noPassthrough(fh fs.FileHandle) fs.FileHandle {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		return &stallFile{lf}
	}
	return fh
}

// stallFile is a loopback file without FUSE passthrough.
type stallFile struct{ *fs.LoopbackFile }

func (*stallFile) PassthroughFd() (int, bool) { return 0, false }

func (n *stallNode) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := n.disk.gate(); errno != 0 {
		return 0, errno
	}
	w, ok := f.(fs.FileWriter)
	if !ok {
		return 0, syscall.EBADF
	}
	return w.Write(ctx, data, off)
}

func (n *stallNode) Writev(ctx context.Context, f fs.FileHandle, data [][]byte, off int64) (uint32, syscall.Errno) {
	if errno := n.disk.gate(); errno != 0 {
		return 0, errno
	}
	if w, ok := f.(fs.FileWritever); ok {
		return w.Writev(ctx, data, off)
	}
	w, ok := f.(fs.FileWriter)
	if !ok {
		return 0, syscall.EBADF
	}
	var b []byte
	for _, d := range data {
		b = append(b, d...)
	}
	return w.Write(ctx, b, off)
}

func (n *stallNode) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if errno := n.disk.gate(); errno != 0 {
		return errno
	}
	if s, ok := f.(fs.FileFsyncer); ok {
		return s.Fsync(ctx, flags)
	}
	return 0
}

func (n *stallNode) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if errno := n.disk.gate(); errno != 0 {
		return errno
	}
	if a, ok := f.(fs.FileAllocater); ok {
		return a.Allocate(ctx, off, size, mode)
	}
	return syscall.ENOTSUP
}
