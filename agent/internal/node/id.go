package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hostscale/hostscale/internal/names"
)

// IDFile is the name of the file, in the data directory, that keeps the
// node id across restarts.
const IDFile = "node-id"

// MaxIDLength is the longest node id: the length of a DNS label.
const MaxIDLength = names.MaxLength

// ErrIDMismatch is returned by ResolveID when the id asked for differs from
// the stored one.
var ErrIDMismatch = errors.New("node id differs from the stored one")

// ValidateID reports whether id is a DNS label (RFC 1123): 1 to 63
// lowercase letters, digits and '-', starting and ending with a letter or
// digit.
func ValidateID(id string) error { return names.Check(id) }

// SanitizeID turns a hostname into a DNS label (see names.FromHostname).
// It returns "" when nothing usable is left.
func SanitizeID(hostname string) string { return names.FromHostname(hostname) }

// ResolveID returns the node id of an agent whose data directory is dir,
// and writes it there when it was not stored yet. The stored id wins; a
// non-empty want that differs from it is ErrIDMismatch. Without a stored
// id, want is used, or else the sanitized hostname. dir must exist.
func ResolveID(dir, want, hostname string) (string, error) {
	path := filepath.Join(dir, IDFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		stored := strings.TrimSpace(string(b))
		if err := ValidateID(stored); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
		if want != "" && want != stored {
			return "", fmt.Errorf("%w: %q is stored in %s; remove that file to rename the node", ErrIDMismatch, stored, path)
		}
		return stored, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("read node id: %w", err)
	}
	id := want
	if id == "" {
		id = SanitizeID(hostname)
		if id == "" {
			return "", fmt.Errorf("cannot make a node id from hostname %q: set one", hostname)
		}
	}
	if err := ValidateID(id); err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("store node id: %w", err)
	}
	return id, nil
}

// writeFileAtomic writes data to path through a temporary file and a
// rename, so that a crash leaves either no file or the whole one.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}
