package driver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Cgroup modes (Config.Cgroups).
const (
	// CgroupsAuto enforces reservations where the cgroup file system lets
	// the agent, and runs instances without limits elsewhere.
	CgroupsAuto = "auto"
	// CgroupsOn enforces reservations, or fails: the driver does not start
	// without a usable cgroup file system, and an instance whose limits
	// cannot be set does not start.
	CgroupsOn = "on"
	// CgroupsOff never enforces reservations.
	CgroupsOff = "off"
)

// cpuPeriodMicros is the CFS period of the CPU quotas: a reservation of
// m millicores may run m/1000 of each 100ms.
const cpuPeriodMicros = 100_000

// cgroups puts instances into cgroups that hold them to their
// reservations: a CPU quota of their cores and a memory limit of their
// bytes. It works on the unified hierarchy (cgroup v2) and on the cpu and
// memory controllers of v1. Each instance with a reservation gets a group
// of its own, named by its id, under the parent group.
type cgroups struct {
	v2 bool
	// The parent groups of the cpu and the memory controllers: one and
	// the same on v2.
	cpu, memory string
}

// openCgroups finds the cgroup file system mounted at root and makes the
// parent group under it; it fails when neither hierarchy is usable.
func openCgroups(root, parent string) (*cgroups, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		dir := filepath.Join(root, parent)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup v2: %w", err)
		}
		// The controllers must be enabled in every group from the root
		// down to the parent, for the parent's children.
		at := root
		for _, part := range append([]string{""}, strings.Split(filepath.Clean(parent), string(filepath.Separator))...) {
			at = filepath.Join(at, part)
			ctl := filepath.Join(at, "cgroup.subtree_control")
			if controllersEnabled(ctl) {
				continue
			}
			if err := writeControl(ctl, "+cpu +memory"); err != nil {
				return nil, fmt.Errorf("cgroup v2: enable the cpu and memory controllers in %s: %w", ctl, err)
			}
		}
		return &cgroups{v2: true, cpu: dir, memory: dir}, nil
	}
	cg := &cgroups{cpu: filepath.Join(root, "cpu", parent), memory: filepath.Join(root, "memory", parent)}
	for _, c := range []string{"cpu", "memory"} {
		if _, err := os.Stat(filepath.Join(root, c, "cgroup.procs")); err != nil {
			return nil, fmt.Errorf("no cgroup v2 nor a v1 %s controller at %s", c, root)
		}
	}
	for _, dir := range []string{cg.cpu, cg.memory} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup v1: %w", err)
		}
	}
	return cg, nil
}

// controllersEnabled reports whether a cgroup.subtree_control file lists
// cpu and memory.
func controllersEnabled(path string) bool {
	b, _ := os.ReadFile(path)
	f := strings.Fields(string(b))
	return slices.Contains(f, "cpu") && slices.Contains(f, "memory")
}

// limited reports whether r asks for any limit.
func limited(r *pb.InstanceResources) bool {
	return r.GetCpuMillicores() > 0 || r.GetMemoryBytes() > 0
}

// prepare makes id's group with r's limits, before its process starts.
func (c *cgroups) prepare(id string, r *pb.InstanceResources) error {
	write := func(dir, file, value string) error {
		if err := writeControl(filepath.Join(dir, id, file), value); err != nil {
			return fmt.Errorf("cgroup: set %s of %s: %w", file, id, err)
		}
		return nil
	}
	for _, dir := range c.dirs() {
		if err := os.MkdirAll(filepath.Join(dir, id), 0o755); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	quota := int64(r.GetCpuMillicores()) * cpuPeriodMicros / 1000
	switch {
	case c.v2:
		cpu := "max " + strconv.Itoa(cpuPeriodMicros)
		if quota > 0 {
			cpu = strconv.FormatInt(max(quota, 1000), 10) + " " + strconv.Itoa(cpuPeriodMicros)
		}
		if err := write(c.cpu, "cpu.max", cpu); err != nil {
			return err
		}
		mem, swap := "max", "max"
		if r.GetMemoryBytes() > 0 {
			mem, swap = strconv.FormatUint(r.GetMemoryBytes(), 10), "0"
		}
		if err := write(c.memory, "memory.max", mem); err != nil {
			return err
		}
		// No swapping past the limit, where the kernel accounts swap.
		return optional(write(c.memory, "memory.swap.max", swap))
	default:
		if err := write(c.cpu, "cpu.cfs_period_us", strconv.Itoa(cpuPeriodMicros)); err != nil {
			return err
		}
		cpu := "-1"
		if quota > 0 {
			cpu = strconv.FormatInt(max(quota, 1000), 10)
		}
		if err := write(c.cpu, "cpu.cfs_quota_us", cpu); err != nil {
			return err
		}
		mem := "-1"
		if r.GetMemoryBytes() > 0 {
			mem = strconv.FormatUint(r.GetMemoryBytes(), 10)
		}
		// The memory+swap limit may not be below the memory limit: when
		// lowering both, the memory one goes first; when raising, last.
		if err := optional(write(c.memory, "memory.memsw.limit_in_bytes", "-1")); err != nil {
			return err
		}
		if err := write(c.memory, "memory.limit_in_bytes", mem); err != nil {
			return err
		}
		return optional(write(c.memory, "memory.memsw.limit_in_bytes", mem))
	}
}

// optional ignores the error of a write to a control file the kernel may
// not have (swap accounting is a boot option).
func optional(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// writeControl writes value to an existing control file; cgroupfs makes
// its files itself, and a missing one is fs.ErrNotExist.
func writeControl(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}

// join moves pid into id's group; its children from then on are born in
// it.
func (c *cgroups) join(id string, pid int) error {
	for _, dir := range c.dirs() {
		if err := writeControl(filepath.Join(dir, id, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("cgroup: move pid %d into %s: %w", pid, filepath.Join(dir, id), err)
		}
	}
	return nil
}

// oomKills returns how many processes of id's group the kernel killed for
// want of memory.
func (c *cgroups) oomKills(id string) int {
	file := "memory.oom_control"
	if c.v2 {
		file = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(c.memory, id, file))
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "oom_kill" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// remove deletes id's group; a group still holding a process stays (the
// collection of old instance directories tries again).
func (c *cgroups) remove(id string) error {
	var errs []error
	for _, dir := range c.dirs() {
		if err := os.Remove(filepath.Join(dir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// groups lists the instance groups under the parent.
func (c *cgroups) groups() []string {
	var out []string
	seen := map[string]bool{}
	for _, dir := range c.dirs() {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.IsDir() && checkID(e.Name()) == nil && !seen[e.Name()] {
				seen[e.Name()] = true
				out = append(out, e.Name())
			}
		}
	}
	return out
}

func (c *cgroups) dirs() []string {
	if c.v2 {
		return []string{c.cpu}
	}
	return []string{c.cpu, c.memory}
}
