package provider

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func execProvider(timeout time.Duration, command string, args ...string) *pb.ScaleProvider {
	x := &pb.ExecProvider{Command: command, Args: args}
	if timeout > 0 {
		x.Timeout = durationpb.New(timeout)
	}
	return &pb.ScaleProvider{Provider: &pb.ScaleProvider_Exec{Exec: x}}
}

func shell(timeout time.Duration, script string) *pb.ScaleProvider {
	return execProvider(timeout, "/bin/sh", "-c", script)
}

var testEvent = &pb.ScaleEvent{Id: "web-7", Pool: "web", Current: 2, PreviousDesired: 3, Desired: 5, Acted: true}

func TestCallExec_commandSeesTheFourVariables(t *testing.T) {
	now := time.Unix(1700000000, 0).UTC()
	// "sh", not "/bin/sh": a bare name is looked up in PATH.
	p := execProvider(0, "sh", "-c", `echo "$HOSTSCALE_POOL $HOSTSCALE_DESIRED $HOSTSCALE_CURRENT $HOSTSCALE_EVENT_ID"`)
	r := Call(t.Context(), p, testEvent, now)
	require.Empty(t, r.Error)
	require.True(t, r.Ok)
	require.Equal(t, KindExec, r.Kind)
	require.Equal(t, int32(0), r.ExitCode)
	require.Equal(t, "web 5 3 web-7\n", r.Output)
	require.Equal(t, now, r.Time.AsTime())
	require.Zero(t, r.Attempts)
	require.False(t, r.Done)
}

func TestCallExec_keepsTheControllersEnvironmentAndEmptyStdin(t *testing.T) {
	t.Setenv("HOSTSCALE_TEST_INHERITED", "yes")
	t.Setenv("HOSTSCALE_POOL", "stale") // ours wins
	r := Call(t.Context(), shell(0, `echo "$HOSTSCALE_TEST_INHERITED $HOSTSCALE_POOL"; cat; echo end`), testEvent, time.Now())
	require.True(t, r.Ok, r.Error)
	require.Equal(t, "yes web\nend\n", r.Output)
}

func TestCallExec_failingCommandReportsExitCodeAndOutput(t *testing.T) {
	r := Call(t.Context(), shell(0, `echo to-stdout; echo to-stderr >&2; exit 3`), testEvent, time.Now())
	require.False(t, r.Ok)
	require.Equal(t, int32(3), r.ExitCode)
	require.Equal(t, "to-stdout\nto-stderr\n", r.Output)
	require.Equal(t, "exit status 3", r.Error)
}

func TestCallExec_outputBoundedToItsLast4KiB(t *testing.T) {
	r := Call(t.Context(), shell(0, `i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; printf '\377END'`), testEvent, time.Now())
	require.True(t, r.Ok, r.Error)
	require.LessOrEqual(t, len(r.Output), MaxOutput)
	require.Greater(t, len(r.Output), MaxOutput-8)
	require.True(t, strings.HasPrefix(r.Output, "…"))
	require.True(t, strings.HasSuffix(r.Output, "line 1999\n\uFFFDEND"), r.Output[len(r.Output)-40:])
	require.True(t, utf8.ValidString(r.Output))
	// It fits into a Raft command.
	_, err := proto.Marshal(r)
	require.NoError(t, err)
}

func TestCallExec_timeoutKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	script := `sleep 30 & echo $! > ` + pidFile + `; echo started; wait`
	start := time.Now()
	r := Call(t.Context(), shell(300*time.Millisecond, script), testEvent, start)
	require.Less(t, time.Since(start), 10*time.Second)
	require.False(t, r.Ok)
	require.Equal(t, int32(-1), r.ExitCode)
	require.Equal(t, "timed out after 300ms", r.Error)
	require.Equal(t, "started\n", r.Output)

	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !running(pid) }, 5*time.Second, 10*time.Millisecond,
		"the backgrounded sleep %d survived", pid)
}

// running reports whether pid is alive: it exists and is not a zombie
// (a container's init may not reap orphans).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestCallExec_cancelledContextKillsTheCommand(t *testing.T) {
	ready := filepath.Join(t.TempDir(), "ready")
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan *pb.ProviderResult)
	go func() { done <- Call(ctx, shell(0, `touch `+ready+`; sleep 30`), testEvent, time.Now()) }()
	require.Eventually(t, func() bool { _, err := os.Stat(ready); return err == nil }, 5*time.Second, 10*time.Millisecond)
	cancel()
	r := <-done
	require.False(t, r.Ok)
	require.Equal(t, int32(-1), r.ExitCode)
	require.Equal(t, "cancelled: context canceled", r.Error)
}

func TestCallExec_killedBySignal(t *testing.T) {
	r := Call(t.Context(), shell(0, `kill -KILL $$`), testEvent, time.Now())
	require.False(t, r.Ok)
	require.Equal(t, int32(-1), r.ExitCode)
	require.Equal(t, "killed by signal 9 (killed)", r.Error)
}

func TestCallExec_missingCommandCannotStart(t *testing.T) {
	for _, tc := range []struct{ command, want string }{
		{"hostscale-no-such-command", `start: exec: "hostscale-no-such-command": executable file not found in $PATH`},
		{"/nonexistent/hostscale-provider", "start: fork/exec /nonexistent/hostscale-provider: no such file or directory"},
		{"", "start: no command"},
	} {
		r := Call(t.Context(), execProvider(0, tc.command), testEvent, time.Now())
		require.False(t, r.Ok)
		require.Equal(t, KindExec, r.Kind)
		require.Equal(t, int32(-1), r.ExitCode)
		require.Equal(t, tc.want, r.Error)
	}
}

func TestCallExec_notExecutableCannotStart(t *testing.T) {
	f := filepath.Join(t.TempDir(), "script")
	require.NoError(t, os.WriteFile(f, []byte("#!/bin/sh\nexit 0\n"), 0o644))
	r := Call(t.Context(), execProvider(0, f), testEvent, time.Now())
	require.False(t, r.Ok)
	require.Equal(t, int32(-1), r.ExitCode)
	require.Contains(t, r.Error, "permission denied")
}

func TestTailBuffer_keepsTheLastBytes(t *testing.T) {
	var tb tailBuffer
	for i := range 3 * MaxOutput {
		_, err := tb.Write([]byte{byte('a' + i%26)})
		require.NoError(t, err)
	}
	n, err := tb.Write([]byte("XYZ"))
	require.NoError(t, err)
	require.Equal(t, 3, n)
	s := tb.String()
	require.Len(t, s, MaxOutput)
	require.True(t, strings.HasPrefix(s, "…"))
	require.True(t, strings.HasSuffix(s, "XYZ"))

	var big tailBuffer
	_, _ = big.Write([]byte(strings.Repeat("x", 5*MaxOutput) + "END"))
	require.True(t, strings.HasSuffix(big.String(), "xEND"))
	require.True(t, strings.HasPrefix(big.String(), "…x"))
}
