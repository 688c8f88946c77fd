// Package config loads a binary's settings from its command-line flags and
// an optional config file, with one rule set for every hostscale binary:
// flags win over the file, and an unknown key or a bad value in the file is
// an error that names the file and the line.
//
// The file holds one `key = value` per line, where key is a flag name
// without the dash; blank lines and lines starting with # are ignored, and
// a value may be double-quoted.
package config

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// ConfigFlag is the name of the flag that points at the config file.
const ConfigFlag = "config"

// Parse parses args into fs, then, when fs has a -config flag that was set,
// reads that file and sets every flag the command line did not set. It
// returns an error naming the flag, or the file and line, that is wrong; fs
// should use flag.ContinueOnError.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cf := fs.Lookup(ConfigFlag)
	if cf == nil || cf.Value.String() == "" {
		return nil
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	path := cf.Value.String()
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	return apply(fs, path, f, set)
}

func apply(fs *flag.FlagSet, path string, r io.Reader, set map[string]bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	seen := map[string]int{}
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return fmt.Errorf("%s:%d: expected key = value, got %q", path, line, text)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if strings.HasPrefix(value, `"`) {
			uq, err := strconv.Unquote(value)
			if err != nil {
				return fmt.Errorf("%s:%d: %s: bad quoted value %s", path, line, key, value)
			}
			value = uq
		}
		fl := fs.Lookup(key)
		if fl == nil || key == ConfigFlag {
			return fmt.Errorf("%s:%d: unknown key %q", path, line, key)
		}
		if prev, dup := seen[key]; dup {
			return fmt.Errorf("%s:%d: key %q already set on line %d", path, line, key, prev)
		}
		seen[key] = line
		if set[key] {
			continue
		}
		if err := fs.Set(key, value); err != nil {
			return fmt.Errorf("%s:%d: %s: invalid value %q: %w", path, line, key, value, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("%s: a line is longer than 1 MiB", path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
