package balancer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/testcluster"
)

func validTable() *Table {
	return &Table{
		Version: Version{Term: 2, Index: 10},
		Pools: []Pool{
			{Name: "web", Hosts: []string{"example.com", "*.example.com"}, Policy: PolicyLeastRequest,
				Backends: []Backend{{Address: "127.0.0.1:9001", Weight: 2}, {Address: "127.0.0.1:9002"}}},
			{Name: "api", Hosts: []string{"example.com"}, PathPrefix: "/api", Policy: PolicyRoundRobin,
				Backends: []Backend{{Address: "[::1]:9003", Draining: true}}, HoldWhenEmpty: 90 * time.Second},
		},
	}
}

func TestTable_Validate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Table)
		want   string // substring of the error; "" means valid
	}{
		{"valid", func(*Table) {}, ""},
		{"empty pools", func(t *Table) { t.Pools = nil }, ""},
		{"bad pool name", func(t *Table) { t.Pools[0].Name = "Web_1" }, "pools[0].name"},
		{"duplicate pool name", func(t *Table) { t.Pools[1].Name = "web" }, "pools[1].name: \"web\" already used by pools[0]"},
		{"bad policy", func(t *Table) { t.Pools[1].Policy = "random" }, "pools[1].policy"},
		{"no hosts", func(t *Table) { t.Pools[0].Hosts = nil }, "pools[0].hosts"},
		{"bad host", func(t *Table) { t.Pools[0].Hosts[1] = "exa mple.com" }, "pools[0].hosts[1]"},
		{"bad prefix", func(t *Table) { t.Pools[1].PathPrefix = "api" }, "pools[1].path_prefix"},
		{"duplicate route", func(t *Table) { t.Pools[1].PathPrefix = "" }, "pools[1].hosts[0]: route example.com/ already served by pool \"web\""},
		{"duplicate route trailing slash", func(t *Table) { t.Pools[0].PathPrefix = "/api/" }, "already served"},
		{"address without port", func(t *Table) { t.Pools[0].Backends[0].Address = "127.0.0.1" }, "pools[0].backends[0].address"},
		{"address not IP", func(t *Table) { t.Pools[0].Backends[0].Address = "localhost:80" }, "host is not an IP address"},
		{"port zero", func(t *Table) { t.Pools[0].Backends[0].Address = "127.0.0.1:0" }, "port"},
		{"duplicate backend", func(t *Table) { t.Pools[0].Backends[1].Address = "127.0.0.1:9001" }, "pools[0].backends[1].address"},
		{"negative weight", func(t *Table) { t.Pools[0].Backends[1].Weight = -1 }, "pools[0].backends[1].weight"},
		{"huge weight", func(t *Table) { t.Pools[0].Backends[1].Weight = MaxWeight + 1 }, "pools[0].backends[1].weight"},
		{"longest hold", func(t *Table) { t.Pools[0].HoldWhenEmpty = MaxHoldWhenEmpty }, ""},
		{"negative hold", func(t *Table) { t.Pools[1].HoldWhenEmpty = -time.Second }, "pools[1].hold_when_empty: -1s is outside 0..5m0s"},
		{"hold over 5 minutes", func(t *Table) { t.Pools[0].HoldWhenEmpty = MaxHoldWhenEmpty + time.Nanosecond }, "pools[0].hold_when_empty: 5m0.000000001s is outside"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tbl := validTable()
			tc.mutate(tbl)
			err := tbl.Validate()
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidTable)
			require.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestVersion_Compare_indexMajor(t *testing.T) {
	require.Equal(t, -1, Version{Term: 9, Index: 1}.Compare(Version{Term: 1, Index: 2}))
	require.Equal(t, 1, Version{Term: 1, Index: 3}.Compare(Version{Term: 5, Index: 2}))
	require.Equal(t, -1, Version{Term: 1, Index: 3}.Compare(Version{Term: 2, Index: 3}))
	require.Equal(t, 0, Version{Term: 2, Index: 3}.Compare(Version{Term: 2, Index: 3}))
}

func TestApply_refusesOlderVersionAndInvalidTables(t *testing.T) {
	b, err := New(testConfig(t))
	require.NoError(t, err)
	require.False(t, b.Ready())
	require.NoError(t, b.Apply(validTable()))
	require.True(t, b.Ready())

	older := validTable()
	older.Version = Version{Term: 3, Index: 9}
	require.ErrorIs(t, b.Apply(older), ErrStaleVersion)

	same := validTable()
	same.Pools = nil
	require.NoError(t, b.Apply(same), "the same version is a no-op")
	require.Len(t, b.Table().Pools, 2)

	bad := validTable()
	bad.Version.Index = 11
	bad.Pools[0].Backends[0].Weight = -5
	require.ErrorIs(t, b.Apply(bad), ErrInvalidTable)
	require.Equal(t, uint64(10), b.Table().Version.Index)

	// The applied table is a copy: mutating the argument changes nothing.
	newer := validTable()
	newer.Version.Index = 12
	require.NoError(t, b.Apply(newer))
	newer.Pools[0].Name = "mutated"
	require.Equal(t, "web", b.Table().Pools[0].Name)
	require.EqualValues(t, 2, b.Counters().TablesRejected, "the stale and the invalid table")
}

func TestDecodeTable_namesPositionAndField(t *testing.T) {
	_, err := DecodeTable([]byte("{\n  \"pools\": [\n    {\"name\": \"web\", \"hosts\": [\"*\"], \"backends\": [{\"address\": \"127.0.0.1:1\", \"weight\": \"x\"}]}\n  ]\n}"), "t.json")
	require.Error(t, err)
	require.Contains(t, err.Error(), "t.json: 3:")
	require.Contains(t, err.Error(), "pools.backends.weight")

	_, err = DecodeTable([]byte(`{"pools": [{"name": "web", "hosts": ["*"], "bogus": 1}]}`), "t.json")
	require.ErrorContains(t, err, "bogus")

	_, err = DecodeTable([]byte(`{"pools": [{"name": "web", "hosts": ["*"], "backends": [{"address": "nope"}]}]}`), "t.json")
	require.ErrorContains(t, err, "t.json: balancer: invalid table: pools[0].backends[0].address")

	_, err = DecodeTable([]byte(`{"pools": []} {}`), "t.json")
	require.ErrorContains(t, err, "data after")

	_, err = DecodeTable([]byte(``), "t.json")
	require.ErrorContains(t, err, "empty")
}

func TestDecodeTable_holdWhenEmptyIsADurationString(t *testing.T) {
	doc := func(hold string) []byte {
		return []byte("{\n  \"pools\": [\n    {\"name\": \"web\", \"hosts\": [\"*\"]},\n" +
			"    {\"name\": \"idle\", \"hosts\": [\"idle.example\"],\n     \"hold_when_empty\": " + hold + "}\n  ]\n}")
	}
	for in, want := range map[string]time.Duration{`"1m30s"`: 90 * time.Second, `"250ms"`: 250 * time.Millisecond, `"0s"`: 0, `null`: 0} {
		tbl, err := DecodeTable(doc(in), "t.json")
		require.NoError(t, err, in)
		require.Zero(t, tbl.Pools[0].HoldWhenEmpty, "absent")
		require.Equal(t, want, tbl.Pools[1].HoldWhenEmpty, in)
	}

	// A value that is not a duration string names the file, the line and
	// column of the value, and the field.
	for in, want := range map[string]string{
		`"5x"`:   `t.json: 5:25: field pools[1].hold_when_empty: "5x" is not a duration string`,
		`30`:     `t.json: 5:25: field pools[1].hold_when_empty: 30 is not a duration string`,
		`""`:     `t.json: 5:25: field pools[1].hold_when_empty: "" is not a duration string`,
		`["1s"]`: `t.json: 5:25: field pools[1].hold_when_empty: ["1s"] is not a duration string`,
	} {
		_, err := DecodeTable(doc(in), "t.json")
		require.ErrorContains(t, err, want, in)
	}
	// Out of range is the table's validation, naming the field.
	_, err := DecodeTable(doc(`"-1s"`), "t.json")
	require.ErrorContains(t, err, "t.json: balancer: invalid table: pools[1].hold_when_empty: -1s is outside 0..5m0s")
	_, err = DecodeTable(doc(`"6m"`), "t.json")
	require.ErrorIs(t, err, ErrInvalidTable)

	// The position is found past other members, nested values and pools.
	_, err = DecodeTable([]byte(`{"version": {"term": 1, "index": 2}, "pools": [null, {"name": "a", "hosts": ["x"], "backends": [{"address": "127.0.0.1:1"}], "hold_when_empty": "1s"}, {"name": "b", "hosts": ["*"], "hold_when_empty": "forever"}]}`), "t.json")
	require.ErrorContains(t, err, `t.json: 1:201: field pools[2].hold_when_empty: "forever" is not a duration string`)
}

func TestTableFile_spellsEveryPoolField(t *testing.T) {
	// The file's form of a pool must follow Pool field for field.
	require.Equal(t, reflect.TypeFor[Pool]().NumField(), reflect.TypeFor[poolDoc]().NumField())
	for i := range reflect.TypeFor[Pool]().NumField() {
		require.Equal(t, reflect.TypeFor[Pool]().Field(i).Name, reflect.TypeFor[poolDoc]().Field(i).Name)
	}
}

func TestTableFile_holdWhenEmptyIsWrittenAsADurationString(t *testing.T) {
	path := filepath.Join(t.TempDir(), TableFileName)
	require.NoError(t, WriteTableFile(path, validTable()))
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(data), `"hold_when_empty": "1m30s"`)
	require.Equal(t, 1, strings.Count(string(data), "hold_when_empty"), "a pool without a hold has no key")
}

func TestTableFile_writeIsAtomicAndRoundTrips(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, TableFileName)
	want := validTable()
	require.NoError(t, WriteTableFile(path, want))
	got, err := ReadTableFile(path)
	require.NoError(t, err)
	require.Equal(t, want, got)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file is left behind")
}

func TestBalancer_dataDirRestoresLastTable(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t)
	cfg.DataDir = dir
	b, err := New(cfg)
	require.NoError(t, err)
	ok, err := b.LoadDataDir()
	require.NoError(t, err)
	require.False(t, ok)
	require.NoError(t, b.Apply(validTable()))

	b2, err := New(cfg)
	require.NoError(t, err)
	ok, err = b2.LoadDataDir()
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, validTable(), b2.Table())

	cfg.DataDir = filepath.Join(dir, "missing", "dir")
	b3, err := New(cfg)
	require.NoError(t, err)
	err = b3.Apply(validTable())
	require.True(t, errors.Is(err, ErrPersist))
	require.True(t, b3.Ready(), "a table that could not be persisted is still in force")
	require.Equal(t, uint64(1), b3.Counters().TablesNotSaved)
}

// With the data directory's disk stalled, tables still come into force as
// they are applied: the Apply that starts a write waits for it at most
// persistWait, those after it not at all. Once the disk answers, the last
// table applied is the one saved.
func TestBalancer_stalledDataDirHoldsNoApplyBack(t *testing.T) {
	disk := testcluster.NewStallDisk(t)
	cfg := testConfig(t)
	cfg.DataDir = disk.Dir
	b, err := New(cfg)
	require.NoError(t, err)
	table := func(index uint64) *Table {
		tb := validTable()
		tb.Version.Index = index
		return tb
	}
	require.NoError(t, b.Apply(table(10)))

	disk.Stall()
	start := time.Now()
	require.NoError(t, b.Apply(table(11)), "a write that takes long is no error")
	first := time.Since(start)
	require.GreaterOrEqual(t, first, persistWait, "it waited for its write")
	require.Less(t, first, persistWait+time.Second)
	require.NoError(t, disk.WaitHeld(context.Background(), 5*time.Second))
	start = time.Now()
	require.NoError(t, b.Apply(table(12)))
	require.NoError(t, b.Apply(table(13)))
	require.Less(t, time.Since(start), persistWait, "later tables do not wait on the held write")
	require.Equal(t, uint64(13), b.Table().Version.Index, "in force")

	disk.Resume()
	require.Eventually(t, func() bool {
		saved, err := ReadTableFile(filepath.Join(disk.Dir, TableFileName))
		return err == nil && saved.Version.Index == 13 && !b.writing.Load()
	}, 10*time.Second, 10*time.Millisecond, "the last table is saved, and the writer is done")
	require.Zero(t, b.Counters().TablesNotSaved)
}
