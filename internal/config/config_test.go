package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

type settings struct {
	addr  string
	id    string
	count int
}

func newFlagSet(s *settings) *flag.FlagSet {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String(ConfigFlag, "", "config file")
	fs.StringVar(&s.addr, "grpc-addr", "127.0.0.1:7700", "")
	fs.StringVar(&s.id, "id", "", "")
	fs.IntVar(&s.count, "count", 1, "")
	return fs
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.conf")
	require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
	return p
}

func TestParse_fileSetsWhatFlagsDoNot(t *testing.T) {
	p := writeFile(t, "# comment\n\nid = c1\ngrpc-addr = \"127.0.0.1:9000\"\ncount=7\n")
	var s settings
	require.NoError(t, Parse(newFlagSet(&s), []string{"-config", p, "-id", "flag-wins"}))
	require.Equal(t, "flag-wins", s.id)
	require.Equal(t, "127.0.0.1:9000", s.addr)
	require.Equal(t, 7, s.count)
}

func TestParse_errorsNameFileAndLine(t *testing.T) {
	for name, tc := range map[string]struct{ text, want string }{
		"unknown key":   {"id = a\nbogus = 1\n", ":2: unknown key \"bogus\""},
		"no equals":     {"id a\n", ":1: expected key = value"},
		"bad value":     {"\n\ncount = many\n", `:3: count: invalid value "many": `},
		"duplicate key": {"id = a\nid = b\n", ":2: key \"id\" already set on line 1"},
		"bad quoting":   {"id = \"a\n", ":1: id: bad quoted value"},
		"config in cfg": {"config = other\n", ":1: unknown key \"config\""},
	} {
		t.Run(name, func(t *testing.T) {
			p := writeFile(t, tc.text)
			var s settings
			err := Parse(newFlagSet(&s), []string{"-config", p})
			require.Error(t, err)
			require.Contains(t, err.Error(), p+tc.want)
		})
	}
}

func TestParse_badFlagAndMissingFile(t *testing.T) {
	var s settings
	require.ErrorContains(t, Parse(newFlagSet(&s), []string{"-nope"}), "nope")
	require.ErrorContains(t, Parse(newFlagSet(&s), []string{"-count", "x"}), "count")
	require.ErrorContains(t, Parse(newFlagSet(&s), []string{"stray"}), `unexpected argument "stray"`)
	require.ErrorContains(t, Parse(newFlagSet(&s), []string{"-config", "/does/not/exist"}), "config file")
}

func FuzzApply(f *testing.F) {
	f.Add("id = a\ncount = 3\n")
	f.Add("grpc-addr = \"x\"\n# c\n")
	f.Add(strings.Repeat("=", 100))
	f.Fuzz(func(t *testing.T, text string) {
		var s settings
		_ = apply(newFlagSet(&s), "f", strings.NewReader(text), map[string]bool{})
	})
}
