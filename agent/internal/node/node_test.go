package node

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/labels"
)

func TestSanitizeID(t *testing.T) {
	tests := map[string]string{
		"web-1":                        "web-1",
		"Web1.Example.COM":             "web1-example-com",
		"--db_01--":                    "db-01",
		"...":                          "",
		"":                             "",
		"höst":                         "h-st",
		strings.Repeat("a", 70):        strings.Repeat("a", 63),
		strings.Repeat("a", 62) + ".b": strings.Repeat("a", 62),
	}
	for in, want := range tests {
		got := SanitizeID(in)
		require.Equal(t, want, got, "SanitizeID(%q)", in)
		if got != "" {
			require.NoError(t, ValidateID(got))
		}
	}
}

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "web-1", "0", strings.Repeat("x", 63)} {
		require.NoError(t, ValidateID(ok), ok)
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a.b", "a_b", "a b", strings.Repeat("x", 64)} {
		require.Error(t, ValidateID(bad), bad)
	}
}

func TestResolveID_storesAndReuses(t *testing.T) {
	dir := t.TempDir()
	id, err := ResolveID(dir, "", "Web1.DC1")
	require.NoError(t, err)
	require.Equal(t, "web1-dc1", id)
	b, err := os.ReadFile(filepath.Join(dir, IDFile))
	require.NoError(t, err)
	require.Equal(t, "web1-dc1\n", string(b))

	id, err = ResolveID(dir, "", "other-host")
	require.NoError(t, err)
	require.Equal(t, "web1-dc1", id, "the stored id wins over a changed hostname")

	id, err = ResolveID(dir, "web1-dc1", "other-host")
	require.NoError(t, err)
	require.Equal(t, "web1-dc1", id)

	_, err = ResolveID(dir, "renamed", "other-host")
	require.True(t, errors.Is(err, ErrIDMismatch), "got %v", err)
}

func TestResolveID_explicitIDWithoutStore(t *testing.T) {
	dir := t.TempDir()
	id, err := ResolveID(dir, "n1", "host")
	require.NoError(t, err)
	require.Equal(t, "n1", id)
	_, err = ResolveID(t.TempDir(), "Bad_ID", "host")
	require.Error(t, err)
	_, err = ResolveID(t.TempDir(), "", "___")
	require.ErrorContains(t, err, "cannot make a node id")
}

func TestResolveID_rejectsCorruptStore(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, IDFile), []byte("not valid!\n"), 0o644))
	_, err := ResolveID(dir, "", "host")
	require.ErrorContains(t, err, IDFile)
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels(" zone=a, tier=web ,example.com/team=core,empty=")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"zone": "a", "tier": "web", "example.com/team": "core", "empty": ""}, got)

	got, err = ParseLabels("")
	require.NoError(t, err)
	require.Empty(t, got)

	tooMany := ""
	for i := range MaxLabels + 1 {
		tooMany += fmt.Sprintf("k%d=v,", i)
	}
	for _, bad := range []string{tooMany[:len(tooMany)-1], "a b", "a=b c", "=v", "k=-v", "k=v,k=w", "-k=v", "a/b/c=d", "Bad_Prefix/k=v", "k=" + strings.Repeat("v", 64), "a=b,"} {
		_, err := ParseLabels(bad)
		require.Error(t, err, bad)
	}
}

func TestParseControllers(t *testing.T) {
	got, err := ParseControllers("127.0.0.1:7700, c2:7700,[::1]:7700,c2:7700")
	require.NoError(t, err)
	require.Equal(t, []string{"127.0.0.1:7700", "c2:7700", "[::1]:7700"}, got)
	for _, bad := range []string{"", " , ", "c1", ":7700", "c1:0", "c1:x", "c1:70000"} {
		_, err := ParseControllers(bad)
		require.Error(t, err, bad)
	}
}

func FuzzParseLabels(f *testing.F) {
	for _, s := range []string{"zone=a,tier=web", "a b", "x/y=z", "", "k=v,k=v", "a=,b="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := ParseLabels(s)
		if err != nil {
			return
		}
		for k, v := range m {
			require.NoError(t, labels.Check(map[string]string{k: v}))
			require.NotContains(t, k+v, ",")
		}
	})
}

func FuzzSanitizeID(f *testing.F) {
	for _, s := range []string{"Web1.Example.COM", "", "---", "höst", strings.Repeat("ab.", 40)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id := SanitizeID(s)
		if id != "" {
			require.NoError(t, ValidateID(id))
		}
		require.Equal(t, id, SanitizeID(id), "sanitizing is idempotent")
	})
}

func FuzzParseControllers(f *testing.F) {
	for _, s := range []string{"127.0.0.1:7700", "a:1,b:2", "[::1]:7700", ":", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out, err := ParseControllers(s)
		if err != nil {
			return
		}
		require.NotEmpty(t, out)
		for _, a := range out {
			_, _, err := net.SplitHostPort(a)
			require.NoError(t, err)
		}
	})
}
