package testcluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Spec is what a launcher needs to start one controller.
type Spec struct {
	ID      string
	DataDir string
	// Bound listeners for the three addresses. A launcher that starts a
	// process closes them just before it does so the process can bind the
	// same addresses. Nil on a Net host, where the process binds them.
	GRPC, Raft, HTTP net.Listener
	// The addresses: the listeners' or, on a Net host, the host's.
	GRPCAddr, RaftAddr, HTTPAddr string
	// Host, when set, is the Net host the controller runs on: its process
	// runs in the host's network namespace.
	Host *Host
	// Peers is the bootstrap list (id=raft-addr,...); empty for a node that
	// joins an existing cluster.
	Peers string
	// HeartbeatTimeout and ElectionTimeout of Raft; zero keeps the default.
	HeartbeatTimeout, ElectionTimeout time.Duration
	// Args are extra flags for a process launcher.
	Args []string
	// Log receives the node's log output.
	Log io.Writer
}

// Process is one running controller.
type Process interface {
	// Stop shuts the controller down gracefully and waits for it.
	Stop() error
	// Kill ends the controller abruptly (SIGKILL for a process) and waits.
	Kill() error
	// Done is closed when the controller has exited.
	Done() <-chan struct{}
}

// Pauser is a Process that can be frozen and thawed, as a long
// garbage-collection pause or a stalled virtual machine freezes a
// server: its sockets stay open and their data waits.
type Pauser interface {
	Pause() error
	Resume() error
}

// Signaler is a Process that takes Unix signals (a SIGHUP that reloads
// its TLS certificate, say).
type Signaler interface {
	Signal(os.Signal) error
}

// Launcher starts controllers.
type Launcher interface {
	Launch(spec Spec) (Process, error)
}

// BuildController builds the hostscale-controller binary into a
// temporary directory of t, for a BinaryLauncher, and returns its path.
func BuildController(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hostscale-controller")
	out, err := exec.Command("go", "build", "-o", path, "github.com/hostscale/hostscale/controller/cmd/hostscale-controller").CombinedOutput()
	if err != nil {
		t.Fatalf("testcluster: build hostscale-controller: %v\n%s", err, out)
	}
	return path
}

// BinaryLauncher starts the hostscale-controller binary at Path.
type BinaryLauncher struct {
	Path string
}

// Launch starts the binary with flags built from spec.
func (b BinaryLauncher) Launch(spec Spec) (Process, error) {
	if _, err := os.Stat(b.Path); err != nil {
		return nil, fmt.Errorf("controller binary: %w (run make build)", err)
	}
	args := []string{
		"-id", spec.ID,
		"-data-dir", spec.DataDir,
		"-grpc-addr", spec.GRPCAddr,
		"-raft-addr", spec.RaftAddr,
		"-http-addr", spec.HTTPAddr,
	}
	if spec.Peers != "" {
		args = append(args, "-peers", spec.Peers)
	}
	if spec.HeartbeatTimeout > 0 {
		args = append(args, "-heartbeat-timeout", spec.HeartbeatTimeout.String(), "-leader-lease-timeout", (spec.HeartbeatTimeout / 2).String())
	}
	if spec.ElectionTimeout > 0 {
		args = append(args, "-election-timeout", spec.ElectionTimeout.String())
	}
	args = append(args, spec.Args...)
	for _, l := range []net.Listener{spec.GRPC, spec.Raft, spec.HTTP} {
		if l != nil {
			l.Close()
		}
	}
	cmd := exec.Command(b.Path, args...)
	if spec.Host != nil {
		cmd = spec.Host.Command(b.Path, args...)
	}
	cmd.Stdout, cmd.Stderr = spec.Log, spec.Log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	p := &binaryProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

type binaryProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

func (p *binaryProcess) Done() <-chan struct{} { return p.done }

func (p *binaryProcess) Stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGCONT) // a paused process could not stop
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		// SIGQUIT makes a Go program print every goroutine's stack to
		// its log and exit: what held the stop up.
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		return errors.New("controller did not stop within 15s of SIGTERM; its goroutines are at the end of its log (SIGQUIT)")
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && ee.ExitCode() != 0 {
		return fmt.Errorf("controller exited with %v", p.err)
	}
	return nil
}

// Pause stops the process (SIGSTOP).
func (p *binaryProcess) Pause() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }

func (p *binaryProcess) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Resume continues it (SIGCONT).
func (p *binaryProcess) Resume() error { return p.cmd.Process.Signal(syscall.SIGCONT) }

func (p *binaryProcess) Kill() error {
	_ = p.cmd.Process.Kill()
	<-p.done
	return nil
}
