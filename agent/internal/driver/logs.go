package driver

import (
	"errors"
	"io"
	"io/fs"
	"os"
)

// An instance writes its stdout and stderr straight into its log files,
// not through a pipe to the agent: a pipe would break (SIGPIPE) when the
// agent exits, and adopted instances must outlive the agent. So the files
// are bounded from outside, by copy and truncate: the instance's
// descriptor is opened with O_APPEND, and after the file is truncated its
// next write lands at the start again. A file can exceed the bound by
// what the instance writes between two checks, and what it writes between
// the copy and the truncation is lost.

// openLog opens a log file for an instance to append to.
func openLog(path string, maxBytes int64) (*os.File, error) {
	if err := rotateLog(path, maxBytes); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

// rotateLog keeps the newest maxBytes of path in path.1 (replacing it) and
// empties path, once path holds maxBytes or more. A missing file is not an
// error.
func rotateLog(path string, maxBytes int64) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil || fi.Size() < maxBytes {
		return err
	}
	src, err := os.Open(path)
	if err != nil {
		return err
	}
	defer src.Close()
	size := fi.Size()
	if _, err := src.Seek(size-maxBytes, io.SeekStart); err != nil {
		return err
	}
	tmp := path + ".1.tmp"
	dst, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = io.CopyN(dst, src, maxBytes)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path+".1")
	}
	if err != nil {
		return errors.Join(err, os.Remove(tmp))
	}
	return os.Truncate(path, 0)
}
