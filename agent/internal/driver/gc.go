package driver

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// collectDirs removes the cgroups and the directories of instances the
// driver no longer has: the groups at once, the directories once nothing
// in them changed for DirRetention, and the oldest beyond DirsKept. It
// holds the driver's lock throughout, so that an instance assigned
// meanwhile cannot lose the directory it is given; a directory holds at
// most four bounded log files.
func (d *Driver) collectDirs() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cg != nil {
		// Groups whose instance exited while the agent was down, or
		// whose last process outlived it.
		for _, id := range d.cg.groups() {
			if d.instances[id] == nil {
				d.removeGroup(id, true)
			}
		}
	}
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		d.log.Warn("cannot list instance directories", "dir", d.dir, "err", err)
		return
	}
	type dead struct {
		id      string
		changed time.Time
	}
	var old []dead
	for _, e := range entries {
		id := e.Name()
		if !e.IsDir() || checkID(id) != nil || d.instances[id] != nil {
			continue
		}
		old = append(old, dead{id, lastChange(filepath.Join(d.dir, id))})
	}
	// Newest first: the first DirsKept within DirRetention stay.
	slices.SortFunc(old, func(a, b dead) int { return b.changed.Compare(a.changed) })
	now := d.cfg.Now()
	for i, o := range old {
		if i < d.cfg.DirsKept && now.Sub(o.changed) < d.cfg.DirRetention {
			continue
		}
		if err := os.RemoveAll(filepath.Join(d.dir, o.id)); err != nil {
			d.log.Warn("cannot remove an old instance's directory", "instance", o.id, "err", err)
			continue
		}
		d.log.Info("removed an old instance's directory", "instance", o.id, "unchanged_for", now.Sub(o.changed).Round(time.Second))
	}
}

// lastChange is the newest modification time of dir and the files in it.
func lastChange(dir string) time.Time {
	var newest time.Time
	_ = filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := e.Info(); err == nil && info.ModTime().After(newest) {
			newest = info.ModTime()
		}
		return nil
	})
	return newest
}
