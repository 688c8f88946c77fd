package driver

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseStat_countsFieldsAfterTheCommandName(t *testing.T) {
	t.Parallel()
	// Field 22 (starttime) is 4242; the command name holds ") (" and spaces.
	stat := "123 (a) (b c) S 1 123 123 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 10 18446744073709551615\n"
	ticks, state, err := parseStat([]byte(stat))
	require.NoError(t, err)
	require.EqualValues(t, 4242, ticks)
	require.EqualValues(t, 'S', state)

	for _, bad := range []string{"", "123 (x", "123 (x) S 1 2", "123 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 nope"} {
		_, _, err := parseStat([]byte(bad))
		require.Error(t, err, bad)
	}
}

func TestReadStat_ownProcessIsAlive(t *testing.T) {
	t.Parallel()
	ticks, state, err := readStat(os.Getpid())
	require.NoError(t, err)
	require.NotZero(t, ticks)
	require.NotEqual(t, byte('Z'), state)
	require.True(t, alive(os.Getpid(), ticks))
	require.False(t, alive(os.Getpid(), ticks+1), "a different start time is another process")
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 10 1 2 3\n"))
	f.Add([]byte("2 ()) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _ = parseStat(b)
	})
}

func FuzzDecodeState(f *testing.F) {
	f.Add([]byte(`{"version":1,"term":2,"index":3,"instances":[{"id":"web-1","pool":"web","template":{"command":"/bin/true"},"port":8080,"pid":10,"start_ticks":5,"restarts":1}]}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{garbage`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		for _, in := range st.Instances {
			require.NoError(t, checkID(in.ID))
			require.Positive(t, in.PID)
		}
	})
}

func TestWriteState_roundTrips(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "state.json")
	want := &stateFile{Version: stateVersion, Term: 2, Index: 9, Instances: []stateInstance{
		{ID: "web-1", Pool: "web", Template: []byte(`{"command":"/bin/app"}`), Port: 8080, PID: 42, StartTicks: 7, Restarts: 3},
	}}
	require.NoError(t, writeState(path, want))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	got, err := decodeState(b)
	require.NoError(t, err)
	require.Equal(t, want.Term, got.Term)
	require.Equal(t, want.Index, got.Index)
	require.Len(t, got.Instances, 1)
	tmpl, err := got.Instances[0].template()
	require.NoError(t, err)
	require.Equal(t, "/bin/app", tmpl.GetCommand())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "templates may hold secrets")
	ents, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	require.Len(t, ents, 1, "no temporary file left")
}

func TestRotateLog_keepsNewestBytesInDotOne(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "stdout.log")
	require.NoError(t, rotateLog(path, 10), "a missing file is fine")

	f, err := openLog(path, 10)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.WriteString("0123456")
	require.NoError(t, err)
	require.NoError(t, rotateLog(path, 10))
	_, err = os.Stat(path + ".1")
	require.ErrorIs(t, err, os.ErrNotExist, "rotated before it was full")

	_, err = f.WriteString("789abcdef")
	require.NoError(t, err)
	require.NoError(t, rotateLog(path, 10))
	old, err := os.ReadFile(path + ".1")
	require.NoError(t, err)
	require.Equal(t, "6789abcdef", string(old))

	// The writer's descriptor appends at the start of the emptied file.
	_, err = f.WriteString("new")
	require.NoError(t, err)
	cur, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "new", string(cur))

	_, err = f.WriteString(strings.Repeat("z", 20))
	require.NoError(t, err)
	require.NoError(t, rotateLog(path, 10))
	old, err = os.ReadFile(path + ".1")
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte("z"), 10), old, "an older .1 is replaced")
}

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	ok := Config{DataDir: "/d", AdvertiseAddr: "127.0.0.1"}
	require.NoError(t, ok.Validate())
	for name, mod := range map[string]func(*Config){
		"no data dir":        func(c *Config) { c.DataDir = "" },
		"no advertise addr":  func(c *Config) { c.AdvertiseAddr = "" },
		"addr with port":     func(c *Config) { c.AdvertiseAddr = "127.0.0.1:80" },
		"max below base":     func(c *Config) { c.RestartBase, c.RestartMax = time.Second, time.Millisecond },
		"negative base":      func(c *Config) { c.RestartBase = -1 },
		"negative log size":  func(c *Config) { c.LogMaxBytes = -1 },
		"negative checks":    func(c *Config) { c.UnhealthyAfter = -1 },
		"negative retention": func(c *Config) { c.DirRetention = -1 },
		"negative kept":      func(c *Config) { c.DirsKept = -1 },
	} {
		c := ok
		mod(&c)
		require.Error(t, c.Validate(), name)
	}
}

func TestParseStopSignal(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]syscall.Signal{
		"": syscall.SIGTERM, "SIGINT": syscall.SIGINT, "int": syscall.SIGINT,
		"SIGQUIT": syscall.SIGQUIT, "sighup": syscall.SIGHUP, "USR2": syscall.SIGUSR2,
	} {
		got, ok := parseStopSignal(in)
		require.True(t, ok, in)
		require.Equal(t, want, got, in)
	}
	got, ok := parseStopSignal("SIGKILL")
	require.False(t, ok, "SIGKILL is not a stop signal")
	require.Equal(t, syscall.SIGTERM, got)
}

func TestBackoff_doublesUpToMaxAndResetsAfterAStableRun(t *testing.T) {
	t.Parallel()
	d := &Driver{cfg: Config{RestartBase: 100 * time.Millisecond, RestartMax: 350 * time.Millisecond, RestartReset: time.Second}}
	in := &instance{}
	var got []time.Duration
	for _, ran := range []time.Duration{0, 0, 0, 0, 2 * time.Second, 0} {
		got = append(got, d.backoffLocked(in, ran))
	}
	ms := time.Millisecond
	require.Equal(t, []time.Duration{100 * ms, 200 * ms, 350 * ms, 350 * ms, 100 * ms, 200 * ms}, got)
}
