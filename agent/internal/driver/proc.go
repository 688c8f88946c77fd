package driver

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is one process of an instance: a child the driver started, or one
// it adopted from the agent's previous life.
type proc struct {
	pid     int
	ticks   uint64    // start time in clock ticks after boot: tells a recycled pid apart
	started time.Time // when the driver started or adopted it; monotonic
	adopted bool      // not a child: its exit is noticed by polling /proc

	done chan struct{} // closed once the process has exited (and, for a child, been reaped)
	// Set before done is closed.
	code int32  // exit code, -1 when unknown or killed by a signal
	why  string // "exited with code 1", "killed by SIGKILL", ...
	oom  bool   // killed by the kernel at its memory limit
}

// exited reports whether done is closed.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// adoptPollInterval is how often an adopted process is looked for in /proc.
const adoptPollInterval = 200 * time.Millisecond

// watchAdopted closes p.done once the adopted process is gone: its /proc
// entry vanished, belongs to a newer process with the same pid, or is a
// zombie. It returns only then, whatever the driver does meanwhile.
func watchAdopted(p *proc) {
	t := time.NewTicker(adoptPollInterval)
	defer t.Stop()
	for range t.C {
		if !alive(p.pid, p.ticks) {
			p.code, p.why = -1, "exited while adopted"
			close(p.done)
			return
		}
	}
}

// alive reports whether pid is a live (not zombie) process that started at
// ticks.
func alive(pid int, ticks uint64) bool {
	t, state, err := readStat(pid)
	return err == nil && t == ticks && state != 'Z'
}

// readStat returns the start time (field 22, in clock ticks after boot) and
// the state letter (field 3) of /proc/<pid>/stat.
func readStat(pid int) (ticks uint64, state byte, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseStat(b)
}

// parseStat parses the contents of a /proc/<pid>/stat file. The command
// name in parentheses may hold spaces and parentheses itself, so fields are
// counted from the last ')'.
func parseStat(b []byte) (ticks uint64, state byte, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, errors.New("stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, errors.New("stat: too few fields")
	}
	ticks, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("stat: starttime: %w", err)
	}
	return ticks, f[0][0], nil
}

// signalProc sends sig to p's process group, or to p alone when it leads
// none. It does nothing once p has exited, nor to an adopted pid that now
// belongs to another process.
func signalProc(p *proc, sig syscall.Signal) error {
	if p.exited() || (p.adopted && !alive(p.pid, p.ticks)) {
		return nil
	}
	err := syscall.Kill(-p.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		err = syscall.Kill(p.pid, sig)
	}
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// describeExit turns how a child ended into its exit code and a message.
func describeExit(ps *os.ProcessState, err error) (int32, string) {
	if ps == nil {
		return -1, fmt.Sprintf("lost: %v", err)
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, "killed by " + signalName(ws.Signal())
	}
	return int32(ps.ExitCode()), fmt.Sprintf("exited with code %d", ps.ExitCode())
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP:  "SIGHUP",
	syscall.SIGINT:  "SIGINT",
	syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGILL:  "SIGILL",
	syscall.SIGTRAP: "SIGTRAP",
	syscall.SIGABRT: "SIGABRT",
	syscall.SIGBUS:  "SIGBUS",
	syscall.SIGFPE:  "SIGFPE",
	syscall.SIGKILL: "SIGKILL",
	syscall.SIGUSR1: "SIGUSR1",
	syscall.SIGSEGV: "SIGSEGV",
	syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE",
	syscall.SIGALRM: "SIGALRM",
	syscall.SIGTERM: "SIGTERM",
	syscall.SIGXCPU: "SIGXCPU",
	syscall.SIGXFSZ: "SIGXFSZ",
	syscall.SIGSYS:  "SIGSYS",
}

// signalName returns "SIGKILL" and the like, or "signal 42".
func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return "signal " + strconv.Itoa(int(s))
}

// stopSignals are the signals a template may name as its stop_signal.
var stopSignals = map[string]syscall.Signal{
	"SIGTERM": syscall.SIGTERM,
	"SIGINT":  syscall.SIGINT,
	"SIGQUIT": syscall.SIGQUIT,
	"SIGHUP":  syscall.SIGHUP,
	"SIGUSR1": syscall.SIGUSR1,
	"SIGUSR2": syscall.SIGUSR2,
}

// parseStopSignal maps a template's stop_signal ("SIGINT", "int") to a
// signal; empty means SIGTERM, and so does an unknown name (ok is false
// then).
func parseStopSignal(s string) (sig syscall.Signal, ok bool) {
	if s == "" {
		return syscall.SIGTERM, true
	}
	s = strings.ToUpper(s)
	if !strings.HasPrefix(s, "SIG") {
		s = "SIG" + s
	}
	if sig, ok := stopSignals[s]; ok {
		return sig, true
	}
	return syscall.SIGTERM, false
}
