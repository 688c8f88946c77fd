package balancer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	var t Table
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%s%w", prefix, jsonError(data, err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%sdata after the table object", prefix)
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("%s%w", prefix, err)
	}
	return &t, nil
}

func jsonError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
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
	data, err := json.MarshalIndent(t, "", "  ")
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
