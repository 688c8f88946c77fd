package driver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Template defaults, for fields left unset.
const (
	defaultHealthInterval = time.Second
	defaultStopGrace      = 10 * time.Second
)

// supervise owns in's life: it starts it when it should run, watches and
// health checks its process, restarts it with back-off after it exits,
// stops it when it is no longer wanted, and removes it once it is stopped.
// It returns when in is removed or ctx is done, leaving a running process
// running. At most one supervise runs per instance (in.supervised).
func (d *Driver) supervise(ctx context.Context, in *instance, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		d.mu.Lock()
		p := in.proc
		d.mu.Unlock()
		if p == nil {
			if !d.waitAndStart(ctx, in) {
				return
			}
			continue
		}
		if !d.watch(ctx, in, p) {
			d.release(in)
			return
		}
		d.exited(in, p)
	}
}

// release hands in back after its supervisor stops because ctx is done.
func (d *Driver) release(in *instance) {
	d.mu.Lock()
	in.supervised = false
	d.mu.Unlock()
}

// waitAndStart waits until in may be started (assigned since New, its
// back-off over) and starts it. It returns false when in was removed (not
// wanted any more, or StopAll) or ctx is done.
func (d *Driver) waitAndStart(ctx context.Context, in *instance) bool {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		d.mu.Lock()
		if !in.wanted || d.closed {
			delete(d.instances, in.id)
			in.supervised = false
			d.notifyLocked()
			d.mu.Unlock()
			d.saveLater()
			return false
		}
		gate := d.assigned
		wait := time.Until(in.retryAt)
		d.mu.Unlock()
		if ctx.Err() != nil {
			d.release(in)
			return false
		}
		if gate && wait <= 0 {
			break
		}
		var tc <-chan time.Time
		if gate {
			timer.Reset(wait)
			tc = timer.C
		}
		select {
		case <-ctx.Done():
		case <-in.kick:
		case <-tc:
		}
	}
	if err := d.start(in); err != nil {
		d.mu.Lock()
		delay := d.backoffLocked(in, 0)
		in.exitCode = -1
		d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_EXITED,
			fmt.Sprintf("cannot start: %v; restart %d in %s", err, in.restarts+1, delay))
		d.mu.Unlock()
		d.log.Warn("cannot start instance", "instance", in.id, "err", err, "retry_in", delay)
	}
	d.saveLater()
	return true
}

// backoffLocked returns how long to wait before starting in again after a
// process that ran for ran, and sets retryAt accordingly.
func (d *Driver) backoffLocked(in *instance, ran time.Duration) time.Duration {
	if in.backoff == 0 || ran >= d.cfg.RestartReset {
		in.backoff = d.cfg.RestartBase
	} else {
		in.backoff = min(2*in.backoff, d.cfg.RestartMax)
	}
	in.retryAt = time.Now().Add(in.backoff)
	return in.backoff
}

// start spawns in's process. On error nothing runs.
func (d *Driver) start(in *instance) error {
	d.mu.Lock()
	if in.started {
		in.restarts++
	}
	in.started = true
	in.proc = nil
	id, pool, tmpl, prev := in.id, in.pool, in.tmpl, in.port
	d.mu.Unlock()

	if err := checkID(id); err != nil {
		return err
	}
	if tmpl == nil {
		return errors.New("the assignment has no template")
	}
	if tmpl.GetCommand() == "" {
		return errors.New("the template has no command")
	}
	path := tmpl.GetCommand()
	if !filepath.IsAbs(path) {
		var err error
		if path, err = exec.LookPath(path); err != nil {
			return err
		}
		if path, err = filepath.Abs(path); err != nil {
			return err
		}
	}
	path = filepath.Clean(path)
	if err := d.allowed(pool, path, tmpl.GetEnv()); err != nil {
		return err
	}
	dir := filepath.Join(d.dir, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	wd := tmpl.GetWorkingDir()
	if wd == "" {
		wd = dir
	} else if !filepath.IsAbs(wd) {
		return fmt.Errorf("working_dir %q is not absolute", wd)
	}
	port, err := d.pickPort(in, prev)
	if err != nil {
		return err
	}
	stdout, err := openLog(filepath.Join(dir, "stdout.log"), d.cfg.LogMaxBytes)
	if err != nil {
		return err
	}
	defer stdout.Close()
	stderr, err := openLog(filepath.Join(dir, "stderr.log"), d.cfg.LogMaxBytes)
	if err != nil {
		return err
	}
	defer stderr.Close()

	env := os.Environ()
	for _, k := range slices.Sorted(maps.Keys(tmpl.GetEnv())) {
		env = append(env, k+"="+tmpl.GetEnv()[k])
	}
	env = append(env,
		"PORT="+strconv.Itoa(port),
		"HOSTSCALE_INSTANCE="+id,
		"HOSTSCALE_POOL="+pool,
		"HOSTSCALE_NODE="+d.cfg.Node,
	)
	newCmd := func() *exec.Cmd {
		return &exec.Cmd{
			Path:   path,
			Args:   append([]string{tmpl.GetCommand()}, tmpl.GetArgs()...),
			Env:    env,
			Dir:    wd,
			Stdout: stdout, // *os.File: handed to the child as is, no copying goroutine
			Stderr: stderr,
			// A group of its own: a signal to the agent's group (Ctrl-C, a
			// service manager stopping the agent) does not reach it, and
			// stopping it reaches its children too.
			SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		}
	}
	grouped, err := d.prepareGroup(id, tmpl.GetResources())
	if err != nil {
		return err
	}
	var (
		cmd  *exec.Cmd
		born bool // in its group from the start
	)
	if grouped {
		cmd, born, err = d.cg.start(id, newCmd)
	} else {
		cmd = newCmd()
		err = cmd.Start()
	}
	if err != nil {
		d.removeGroup(id, grouped)
		return err
	}
	if grouped && !born {
		if err := d.cg.join(id, cmd.Process.Pid); err != nil {
			if d.cfg.Cgroups == CgroupsOn {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				d.removeGroup(id, grouped)
				return err
			}
			d.log.Warn("instance runs without its limits", "instance", id, "err", err)
		}
	}
	p := &proc{pid: cmd.Process.Pid, started: time.Now(), done: make(chan struct{})}
	// Unreaped, the child is at least a zombie: its stat is readable.
	if p.ticks, _, err = readStat(p.pid); err != nil {
		d.log.Warn("cannot read the start time of an instance", "instance", id, "pid", p.pid, "err", err)
	}
	go func() {
		err := cmd.Wait()
		p.code, p.why = describeExit(cmd.ProcessState, err)
		if grouped && d.cg.oomKills(id) > 0 {
			p.oom = true
			p.why = fmt.Sprintf("%s: out of memory at its reservation of %s", p.why, sizeOf(tmpl.GetResources().GetMemoryBytes()))
		}
		d.removeGroup(id, grouped)
		close(p.done)
	}()

	d.mu.Lock()
	in.proc = p
	d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_STARTING, "started; waiting for a health check to pass")
	d.notifyLocked() // the pid changed, whatever the state did
	d.mu.Unlock()
	d.log.Info("started instance", "instance", id, "pool", pool, "pid", p.pid, "port", port)
	return nil
}

// prepareGroup makes the cgroup that holds instance id to r, when r
// reserves anything and reservations are enforced; it reports whether it
// did. Where the group cannot be made, the instance does not start under
// CgroupsOn and starts without limits otherwise.
func (d *Driver) prepareGroup(id string, r *pb.InstanceResources) (bool, error) {
	if d.cg == nil || !limited(r) {
		return false, nil
	}
	if err := d.cg.prepare(id, r); err != nil {
		d.removeGroup(id, true)
		if d.cfg.Cgroups == CgroupsOn {
			return false, err
		}
		d.log.Warn("instance runs without its limits", "instance", id, "err", err)
		return false, nil
	}
	return true, nil
}

// sizeOf writes n bytes in MiB when it is a whole number of them.
func sizeOf(n uint64) string {
	if n > 0 && n%(1<<20) == 0 {
		return strconv.FormatUint(n>>20, 10) + " MiB"
	}
	return strconv.FormatUint(n, 10) + " bytes"
}

// removeGroup removes instance id's cgroup, if it has one.
func (d *Driver) removeGroup(id string, grouped bool) {
	if !grouped {
		return
	}
	if err := d.cg.remove(id); err != nil {
		d.log.Debug("cannot remove an instance's cgroup yet", "instance", id, "err", err)
	}
}

// pickPort reserves a free TCP port for in: the port it had, while that is
// free, so that a restart keeps its address; else one the kernel picks.
// Ports are tried on every address (the wildcard), not only on the
// advertise address: an app that binds ":$PORT", as most do, must not meet
// a port taken on another address of the host (another agent's instance on
// another loopback address, say). Either way no other instance has it.
func (d *Driver) pickPort(in *instance, prev int) (int, error) {
	for attempt := range 10 {
		port := 0
		if attempt == 0 && prev != 0 && portFree(net.JoinHostPort("", strconv.Itoa(prev))) {
			port = prev
		} else {
			ln, err := net.Listen("tcp", ":0")
			if err != nil {
				return 0, fmt.Errorf("pick a port: %w", err)
			}
			port = ln.Addr().(*net.TCPAddr).Port
			_ = ln.Close()
		}
		d.mu.Lock()
		taken := false
		for _, o := range d.instances {
			taken = taken || (o != in && o.port == port)
		}
		if !taken {
			in.port = port
		}
		d.mu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, errors.New("pick a port: every port offered is another instance's")
}

func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// watch health checks p and stops it when in is no longer wanted. It
// returns true once p has exited, false when ctx is done first.
func (d *Driver) watch(ctx context.Context, in *instance, p *proc) bool {
	d.mu.Lock()
	tmpl, addr := in.tmpl, d.address(in.port)
	d.mu.Unlock()
	interval := durationOr(tmpl.GetHealthInterval().AsDuration(), defaultHealthInterval)
	timeout := min(interval, maxCheckTimeout)
	path := tmpl.GetHealthPath()
	grace := durationOr(tmpl.GetStopGrace().AsDuration(), defaultStopGrace)
	sig, ok := parseStopSignal(tmpl.GetStopSignal())
	if !ok {
		d.log.Warn("unknown stop signal; using SIGTERM", "instance", in.id, "signal", tmpl.GetStopSignal())
	}

	checkCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan error, 1) // at most one check in flight
	next := time.NewTimer(0)       // the first check at once
	defer next.Stop()
	var kill *time.Timer
	var killC <-chan time.Time
	defer func() {
		if kill != nil {
			kill.Stop()
		}
	}()
	stopping := false
	failures := 0
	for {
		if !stopping && d.unwanted(in) {
			stopping = true
			if err := signalProc(p, sig); err != nil {
				d.log.Error("cannot signal instance", "instance", in.id, "pid", p.pid, "err", err)
			}
			d.mu.Lock()
			d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_STOPPING,
				fmt.Sprintf("sent %s; SIGKILL after %s", signalName(sig), grace))
			d.mu.Unlock()
			d.log.Info("stopping instance", "instance", in.id, "pid", p.pid, "signal", signalName(sig))
			kill = time.NewTimer(grace)
			killC = kill.C
		}
		select {
		case <-ctx.Done():
			return false
		case <-p.done:
			return true
		case <-in.kick:
		case <-killC:
			killC = nil
			if err := signalProc(p, syscall.SIGKILL); err != nil {
				d.log.Error("cannot kill instance", "instance", in.id, "pid", p.pid, "err", err)
			}
			d.mu.Lock()
			d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_STOPPING,
				fmt.Sprintf("still running %s after %s; sent SIGKILL", grace, signalName(sig)))
			d.mu.Unlock()
			d.log.Warn("killed instance after its stop grace", "instance", in.id, "pid", p.pid, "grace", grace)
		case <-next.C:
			if !stopping {
				go func() { results <- check(checkCtx, d.client, addr, path, timeout) }()
			}
		case err := <-results:
			if stopping {
				continue
			}
			d.mu.Lock()
			d.healthLocked(in, err, &failures)
			starting := in.state == pb.InstanceState_INSTANCE_STATE_STARTING
			d.mu.Unlock()
			if starting {
				next.Reset(min(interval, startPoll))
			} else {
				next.Reset(interval)
			}
		}
	}
}

// unwanted reports whether in is to be stopped.
func (d *Driver) unwanted(in *instance) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !in.wanted || d.closed
}

// healthLocked applies one health check result to in's state.
func (d *Driver) healthLocked(in *instance, err error, failures *int) {
	const (
		healthy   = pb.InstanceState_INSTANCE_STATE_HEALTHY
		unhealthy = pb.InstanceState_INSTANCE_STATE_UNHEALTHY
	)
	if err == nil {
		*failures = 0
		if in.state != healthy {
			d.log.Info("instance is healthy", "instance", in.id)
		}
		d.setStateLocked(in, healthy, "passing health checks")
		return
	}
	*failures++
	switch in.state {
	case healthy:
		if *failures >= d.cfg.UnhealthyAfter {
			d.log.Warn("instance is unhealthy", "instance", in.id, "err", err)
			d.setStateLocked(in, unhealthy, "failing health checks: "+err.Error())
		}
	case unhealthy:
		// No count in the message: it would change the report at every
		// check.
		d.setStateLocked(in, unhealthy, "failing health checks: "+err.Error())
	default:
		d.setStateLocked(in, in.state, fmt.Sprintf("waiting for a health check to pass: %v", err))
	}
}

// exited records that p, in's process, has exited: to be removed when it
// was being stopped, else to be started again after a back-off.
func (d *Driver) exited(in *instance, p *proc) {
	d.mu.Lock()
	in.proc = nil
	in.exitCode = p.code
	stopped := in.state == pb.InstanceState_INSTANCE_STATE_STOPPING
	switch {
	case !in.wanted || d.closed:
		// waitAndStart removes it.
	case stopped:
		// Assigned again while it stopped: start it again at once.
		in.retryAt = time.Time{}
		d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_EXITED, p.why+"; stopped, and assigned again")
	case !d.assigned:
		d.countExit(in, p)
		in.retryAt = time.Time{}
		d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_EXITED, p.why+"; waiting for assignments to restart it")
	default:
		d.countExit(in, p)
		delay := d.backoffLocked(in, time.Since(p.started))
		d.setStateLocked(in, pb.InstanceState_INSTANCE_STATE_EXITED,
			fmt.Sprintf("%s; restart %d in %s", p.why, in.restarts+1, delay))
	}
	d.notifyLocked() // the pid is gone
	d.mu.Unlock()
	d.log.Info("instance exited", "instance", in.id, "pid", p.pid, "why", p.why)
	d.saveLater()
}

// countExit counts an exit the driver did not ask for, by pool and why:
// "oom" (the kernel, at the memory reservation), "signal", "code" (the
// process exited), "unknown" (an adopted process, whose status is not
// ours to read).
func (d *Driver) countExit(in *instance, p *proc) {
	if d.exits == nil {
		return
	}
	why := "code"
	switch {
	case p.oom:
		why = "oom"
	case p.adopted:
		why = "unknown"
	case p.code == -1:
		why = "signal"
	}
	d.exits.WithLabelValues(in.pool, why).Inc()
}

// saveLater has the state file written by Run's saver, at once unless a
// write is under way: a supervisor never waits for the disk, so that an
// instance that exits while the data directory's disk is stalled is
// restarted all the same (the write of its new pid follows once the disk
// answers).
func (d *Driver) saveLater() {
	select {
	case d.saveKick <- struct{}{}:
	default: // a save is already asked for: it will write this change too
	}
}

// saver writes the state file whenever saveLater asks, until stop closes.
func (d *Driver) saver(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case <-d.saveKick:
			if err := d.save(); err != nil {
				d.log.Error("cannot save state", "err", err)
			}
		}
	}
}

// durationOr returns v, or def when v is not positive.
func durationOr(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// allowed checks exe and a template's env against -allow-commands.
func (d *Driver) allowed(pool, exe string, env map[string]string) error {
	rules := d.cfg.AllowCommands
	if rules == nil {
		return nil
	}
	refused := func() {
		if d.refused != nil {
			d.refused.WithLabelValues(pool).Inc()
		}
	}
	if !rules.Allows(exe) {
		refused()
		return fmt.Errorf("%s is not an allowed command on this host (-allow-commands %s)", exe, strings.Join(rules.Patterns(), ","))
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		if strings.HasPrefix(k, "LD_") || k == "GCONV_PATH" {
			refused()
			return fmt.Errorf("env %s: the dynamic loader's variables (LD_*, GCONV_PATH) are not allowed on a host with -allow-commands", k)
		}
	}
	return nil
}
