package balancer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// MaxTableFileSize bounds the size of a table file or decoded table document.
const MaxTableFileSize = 64 << 20

// DecodeTable decodes and validates a JSON table document (see docs/balancer.md).
// Unknown fields are errors. Errors name the position (line:column) or the
// field at fault; name prefixes them (a file name, or "" for none).
func DecodeTable(data []byte, name string) (*Table, error) {
	prefix := ""
	if name != "" {
		prefix = name + ": "
	}
	if len(data) > MaxTableFileSize {
		return nil, fmt.Errorf("%stable larger than %d bytes", prefix, MaxTableFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var doc tableDoc
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%s%w", prefix, jsonError(data, err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%sdata after the table object", prefix)
	}
	t := doc.table()
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%s%w", prefix, err)
	}
	return t, nil
}

// tableDoc is a Table as the table file spells it: the same fields, with
// durations as strings ("30s").
type tableDoc struct {
	Version Version   `json:"version"`
	Pools   []poolDoc `json:"pools"`
}

// poolDoc has Pool's fields (a test checks), so that decoding errors name
// them as the file does ("pools.backends.weight").
type poolDoc struct {
	Name          string       `json:"name"`
	Hosts         []string     `json:"hosts"`
	PathPrefix    string       `json:"path_prefix,omitempty"`
	Policy        Policy       `json:"policy,omitempty"`
	Backends      []Backend    `json:"backends"`
	HoldWhenEmpty fileDuration `json:"hold_when_empty,omitempty"`
	HTTPSRedirect bool         `json:"https_redirect,omitempty"`
}

func docOf(t *Table) *tableDoc {
	d := &tableDoc{Version: t.Version, Pools: make([]poolDoc, len(t.Pools))}
	for i, p := range t.Pools {
		d.Pools[i] = poolDoc{Name: p.Name, Hosts: p.Hosts, PathPrefix: p.PathPrefix, Policy: p.Policy,
			Backends: p.Backends, HoldWhenEmpty: fileDuration(p.HoldWhenEmpty), HTTPSRedirect: p.HTTPSRedirect}
	}
	return d
}

func (d *tableDoc) table() *Table {
	t := &Table{Version: d.Version}
	if d.Pools != nil {
		t.Pools = make([]Pool, len(d.Pools))
	}
	for i, p := range d.Pools {
		t.Pools[i] = Pool{Name: p.Name, Hosts: p.Hosts, PathPrefix: p.PathPrefix, Policy: p.Policy,
			Backends: p.Backends, HoldWhenEmpty: time.Duration(p.HoldWhenEmpty), HTTPSRedirect: p.HTTPSRedirect}
	}
	return t
}

// fileDuration is a duration in a table file: a string time.ParseDuration
// reads ("30s", "1m30s", "500ms").
type fileDuration time.Duration

func (d fileDuration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *fileDuration) UnmarshalJSON(b []byte) error {
	v, err := parseFileDuration(b)
	if err != nil {
		return err
	}
	*d = fileDuration(v)
	return nil
}

// durationError is a duration that does not parse. The decoder does not say
// where it is; DecodeTable finds it (holdPosition).
type durationError struct{ value string }

func (e *durationError) Error() string {
	return fmt.Sprintf("%s is not a duration string (like \"30s\" or \"1m30s\")", e.value)
}

func parseFileDuration(b []byte) (time.Duration, error) {
	if string(b) == "null" {
		return 0, nil // as if absent
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, &durationError{value: string(b)}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, &durationError{value: string(b)}
	}
	return v, nil
}

// holdPosition returns the pool index and the offset of the value of the
// first pools[].hold_when_empty that does not parse, walking data in the
// order the decoder did (it stopped there).
func holdPosition(data []byte) (pool int, off int64, ok bool) {
	members(data, 0, func(key string, pools []byte, at int64) bool {
		if key != "pools" {
			return true
		}
		elements(pools, at, func(i int, p []byte, at int64) bool {
			members(p, at, func(key string, v []byte, at int64) bool {
				if key == "hold_when_empty" {
					if _, err := parseFileDuration(v); err != nil {
						pool, off, ok = i, at, true
					}
				}
				return !ok
			})
			return !ok
		})
		return !ok
	})
	return pool, off, ok
}

// members calls f with each member of the JSON object data (which starts at
// offset base of the document) and its value's offset, while f returns
// true. Anything but an object calls nothing.
func members(data []byte, base int64, f func(key string, v []byte, at int64) bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return
	}
	for dec.More() {
		tok, err := dec.Token()
		key, isKey := tok.(string)
		if err != nil || !isKey {
			return
		}
		at := skipBlanks(data, dec.InputOffset(), ':')
		var v json.RawMessage
		if dec.Decode(&v) != nil || !f(key, v, base+at) {
			return
		}
	}
}

// elements calls f with each element of the JSON array data (at offset base
// of the document) and its offset, while f returns true.
func elements(data []byte, base int64, f func(i int, v []byte, at int64) bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return
	}
	for i := 0; dec.More(); i++ {
		at := skipBlanks(data, dec.InputOffset(), ',')
		var v json.RawMessage
		if dec.Decode(&v) != nil || !f(i, v, base+at) {
			return
		}
	}
}

// skipBlanks returns the offset of the first byte at or after off that is
// neither JSON white space nor sep.
func skipBlanks(data []byte, off int64, sep byte) int64 {
	for off < int64(len(data)) {
		switch data[off] {
		case ' ', '\t', '\r', '\n', sep:
			off++
			continue
		}
		break
	}
	return off
}

func jsonError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var de *durationError
	switch {
	case errors.As(err, &de):
		if i, off, ok := holdPosition(data); ok {
			l, c := lineCol(data, off)
			return fmt.Errorf("%d:%d: field pools[%d].hold_when_empty: %w", l, c, i, de)
		}
		return fmt.Errorf("field pools.hold_when_empty: %w", de)
	case errors.As(err, &se):
		l, c := lineCol(data, se.Offset)
		return fmt.Errorf("%d:%d: %v", l, c, se)
	case errors.As(err, &te):
		l, c := lineCol(data, te.Offset)
		return fmt.Errorf("%d:%d: field %s: cannot use JSON %s as %s", l, c, te.Field, te.Value, te.Type)
	case errors.Is(err, io.EOF):
		return errors.New("empty document")
	}
	return err
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// ReadTableFile reads and validates the table file at path.
func ReadTableFile(path string) (*Table, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read table: %w", err)
	}
	return DecodeTable(data, path)
}

// WriteTableFile writes t to path atomically: a temporary file in the same
// directory is written, synced and renamed over path, then the directory is
// synced, so a crash leaves either the old or the new table.
func WriteTableFile(path string, t *Table) error {
	data, err := json.MarshalIndent(docOf(t), "", "  ")
	if err != nil {
		return fmt.Errorf("encode table: %w", err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".table-*.tmp")
	if err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write table %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync table %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close table %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename table: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
