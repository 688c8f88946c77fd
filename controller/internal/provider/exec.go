package provider

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// waitDelay bounds how long an exited (or killed) command's output pipe is
// read: a child that left the process group can hold it open forever.
const waitDelay = 2 * time.Second

// callExec runs x once and fills r.
func callExec(ctx context.Context, x *pb.ExecProvider, ev *pb.ScaleEvent, r *pb.ProviderResult) {
	r.ExitCode = -1
	path := x.GetCommand()
	if path == "" {
		r.Error = "start: no command"
		return
	}
	if !filepath.IsAbs(path) {
		// Resolved here rather than by exec.Command so that a relative name
		// never runs from the controller's working directory (LookPath
		// refuses "." in PATH with exec.ErrDot).
		p, err := exec.LookPath(path)
		if err != nil {
			r.Error = fmt.Sprintf("start: %v", err)
			return
		}
		path = p
	}
	d := timeout(x.GetTimeout(), DefaultExecTimeout, MaxExecTimeout)
	ctx, cancel := withTimeout(ctx, d)
	defer cancel()

	cmd := exec.CommandContext(ctx, path, x.GetArgs()...)
	// Later entries win over the controller's own, should it have them.
	cmd.Env = append(os.Environ(),
		"HOSTSCALE_POOL="+ev.GetPool(),
		"HOSTSCALE_DESIRED="+strconv.FormatUint(uint64(ev.GetDesired()), 10),
		"HOSTSCALE_CURRENT="+strconv.FormatUint(uint64(ev.GetPreviousDesired()), 10),
		"HOSTSCALE_EVENT_ID="+ev.GetId(),
	)
	// Its own group, so that the kill reaches what the command started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = waitDelay
	out := &tailBuffer{}
	// The same writer for both: os/exec then uses one pipe, keeps the two
	// streams in the order written and calls Write from one goroutine.
	cmd.Stdout, cmd.Stderr = out, out

	err := cmd.Run()
	r.Output = out.String()
	if cmd.ProcessState != nil {
		r.ExitCode = int32(cmd.ProcessState.ExitCode())
	}
	if msg := ctxError(ctx, d); msg != "" && (err != nil || r.ExitCode != 0) {
		r.Error = msg
		return
	}
	var ee *exec.ExitError
	switch {
	case err == nil, errors.Is(err, exec.ErrWaitDelay):
		// Exited 0; ErrWaitDelay only says that a child it left behind
		// kept the output pipe open, which does not undo the success.
	case errors.As(err, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.Error = fmt.Sprintf("killed by signal %d (%v)", ws.Signal(), ws.Signal())
		} else {
			r.Error = fmt.Sprintf("exit status %d", r.ExitCode)
		}
	case cmd.ProcessState == nil:
		r.Error = fmt.Sprintf("start: %v", err)
	default:
		r.Error = err.Error()
	}
	r.Ok = r.ExitCode == 0 && r.Error == ""
}

// tailBuffer keeps the last MaxOutput bytes written to it. It is not safe
// for concurrent use; os/exec writes to it from one goroutine.
type tailBuffer struct {
	b   []byte
	cut bool
}

// Write never fails, so the command never sees a broken pipe because of us.
func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > MaxOutput {
		p = p[len(p)-MaxOutput:]
		t.cut = true
	}
	t.b = append(t.b, p...)
	// Trim in bulk, at twice the bound, so that copying stays amortised.
	if len(t.b) > 2*MaxOutput {
		t.b = append(t.b[:0], t.b[len(t.b)-MaxOutput:]...)
		t.cut = true
	}
	return n, nil
}

// String returns the kept output, valid UTF-8, "…" first when cut.
func (t *tailBuffer) String() string {
	b, cut := t.b, t.cut
	if len(b) > MaxOutput {
		b, cut = b[len(b)-MaxOutput:], true
	}
	return clip(b, true, cut)
}
