package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/logging"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// ErrRunning is returned by Run while another Run of the same Driver is
// supervising.
var ErrRunning = errors.New("driver: already running")

// logCheckInterval is how often Run looks at the instances' log sizes.
const logCheckInterval = 200 * time.Millisecond

// dirCheckInterval is how often Run looks for instance directories to
// remove.
const dirCheckInterval = time.Minute

// Driver runs the instances assigned to this agent. Assign, Report,
// Usage, Changed and StopAll are safe for concurrent use, with each other
// and with Run.
type Driver struct {
	cfg       Config
	log       *slog.Logger
	dir       string // DataDir/instances
	statePath string
	client    *http.Client

	mu        sync.Mutex
	instances map[string]*instance
	term      uint64 // stamp of the newest applied assignment set
	index     uint64
	assigned  bool // a set was applied since New: starting and stopping are allowed
	closed    bool // StopAll was called: nothing starts any more
	running   bool // Run supervises; runCtx and runWG are its
	runCtx    context.Context
	runWG     sync.WaitGroup
	changed   chan struct{} // closed and replaced at every change of Report
	gen       uint64        // counts changes that may need saving

	saveMu   sync.Mutex    // serializes writes of the state file
	saveKick chan struct{} // saveLater's requests to Run's saver (capacity 1)
	savedGen uint64        // gen of the last state written (or read)

	usageMu sync.Mutex           // serializes Usage
	usage   map[string]usageMark // by instance: the last CPU reading of its process

	cg    *cgroups               // nil: reservations are not enforced
	exits *prometheus.CounterVec // nil without a Registerer
	// refused counts starts -allow-commands refused, by pool; nil without
	// a Registerer.
	refused *prometheus.CounterVec
	// saving is when the state file's write under way began (Unix
	// nanoseconds), 0 while none runs.
	saving atomic.Int64
}

// instance is one assigned (or adopted) instance. Its fields are guarded
// by Driver.mu, except kick and id.
type instance struct {
	id   string
	kick chan struct{} // capacity 1: its supervisor should look again

	pool       string
	tmpl       *pb.InstanceTemplate
	wanted     bool // in the newest assignment set (adopted ones until the first set)
	supervised bool // a supervise goroutine owns it
	proc       *proc
	started    bool      // a start was attempted or the process adopted
	retryAt    time.Time // not to be started before
	backoff    time.Duration

	// What Report shows.
	state    pb.InstanceState
	since    time.Time
	port     int
	exitCode int32
	restarts uint32
	message  string
}

// New returns a Driver for cfg. It reads DataDir/instances/state.json, if
// any, and adopts every instance listed there whose process still runs;
// a state file it cannot read is an error naming the file, never silently
// dropped. Adopted processes are watched from then on, but health checked
// only once Run runs.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	d := &Driver{
		cfg:       cfg,
		log:       logging.OrDiscard(cfg.Logger),
		dir:       filepath.Join(cfg.DataDir, "instances"),
		client:    newHealthClient(),
		instances: make(map[string]*instance),
		changed:   make(chan struct{}),
		saveKick:  make(chan struct{}, 1),
	}
	if cfg.Registerer != nil {
		d.exits = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostscale_agent_instance_exits_total",
			Help: "Instance exits the agent did not ask for, by pool and why: code, signal, oom (at the memory reservation), unknown (adopted).",
		}, []string{"pool", "why"})
		if err := cfg.Registerer.Register(d.exits); err != nil {
			return nil, fmt.Errorf("driver: %w", err)
		}
		d.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hostscale_agent_instance_refused_starts_total",
			Help: "Instance starts refused by -allow-commands (a command not allowed, or a template setting LD_* or GCONV_PATH), by pool.",
		}, []string{"pool"})
		if err := cfg.Registerer.Register(d.refused); err != nil {
			return nil, fmt.Errorf("driver: %w", err)
		}
		saving := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hostscale_agent_state_write_in_progress_seconds",
			Help: "How long the write of the instances' state file under way has run; 0 when none runs. Seconds mean the data directory's disk is stalled.",
		}, func() float64 { return d.SaveInProgress().Seconds() })
		if err := cfg.Registerer.Register(saving); err != nil {
			return nil, fmt.Errorf("driver: %w", err)
		}
	}
	d.statePath = filepath.Join(d.dir, "state.json")
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return nil, fmt.Errorf("driver: %w", err)
	}
	if cfg.Cgroups != CgroupsOff {
		// A group per node: agents sharing a host (tests, several
		// loopback nodes) never touch each other's instance groups.
		parent := cfg.CgroupParent
		if checkID(cfg.Node) == nil {
			parent = filepath.Join(parent, cfg.Node)
		}
		cg, err := openCgroups(cfg.CgroupRoot, parent)
		switch {
		case err == nil:
			d.cg = cg
			d.log.Info("instance reservations are enforced in cgroups", "v2", cg.v2, "parent", parent)
		case cfg.Cgroups == CgroupsOn:
			return nil, fmt.Errorf("driver: cgroups: %w", err)
		default:
			d.log.Warn("instance reservations are not enforced: no usable cgroups", "err", err)
		}
	}
	if err := d.load(); err != nil {
		return nil, err
	}
	return d, nil
}

// load adopts what the state file lists.
func (d *Driver) load() error {
	b, err := os.ReadFile(d.statePath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("driver: read state: %w", err)
	}
	st, err := decodeState(b)
	if err != nil {
		return fmt.Errorf("driver: state file %s is unusable (%w); move it away to start without adopting the instances it lists", d.statePath, err)
	}
	d.term, d.index = st.Term, st.Index
	now := time.Now()
	for _, s := range st.Instances {
		if !alive(s.PID, s.StartTicks) {
			d.log.Info("instance exited while the agent was down", "instance", s.ID, "pool", s.Pool, "pid", s.PID)
			continue
		}
		tmpl, _ := s.template() // checked by decodeState
		p := &proc{pid: s.PID, ticks: s.StartTicks, started: now, adopted: true, done: make(chan struct{})}
		go watchAdopted(p)
		d.instances[s.ID] = &instance{
			id:       s.ID,
			kick:     make(chan struct{}, 1),
			pool:     s.Pool,
			tmpl:     tmpl,
			wanted:   true,
			proc:     p,
			started:  true,
			state:    pb.InstanceState_INSTANCE_STATE_STARTING,
			since:    d.cfg.Now(),
			port:     s.Port,
			restarts: s.Restarts,
			message:  "adopted; waiting for a health check to pass",
		}
		d.log.Info("adopted instance", "instance", s.ID, "pool", s.Pool, "pid", s.PID, "port", s.Port)
	}
	return nil
}

// Run supervises the instances until ctx is cancelled, then returns once
// its goroutines have, with the state file written: nil, or the error of
// that last write. Instances keep running after Run returns (they are in
// process groups of their own, out of reach of a signal to the agent's
// group) unless StopAll stopped them. Run returns ErrRunning while another
// Run is supervising.
func (d *Driver) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.running {
		d.mu.Unlock()
		return ErrRunning
	}
	d.running, d.runCtx = true, ctx
	for _, in := range d.instances {
		d.superviseLocked(in)
	}
	d.mu.Unlock()

	stopSaver, saverDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(saverDone)
		d.saver(stopSaver)
	}()
	t := time.NewTicker(logCheckInterval)
	defer t.Stop()
	d.collectDirs()
	lastGC := time.Now()
	for {
		select {
		case <-t.C:
			d.rotateLogs()
			if time.Since(lastGC) >= dirCheckInterval {
				d.collectDirs()
				lastGC = time.Now()
			}
			continue
		case <-ctx.Done():
		}
		break
	}
	d.mu.Lock()
	d.running, d.runCtx = false, nil
	d.mu.Unlock()
	// No supervisor is added from here on: running is false.
	d.runWG.Wait()
	close(stopSaver)
	<-saverDone
	return d.save()
}

// superviseLocked starts in's supervisor under Run, unless it has one or
// Run is not running.
func (d *Driver) superviseLocked(in *instance) {
	if in.supervised || !d.running {
		return
	}
	in.supervised = true
	d.runWG.Add(1)
	go d.supervise(d.runCtx, in, &d.runWG)
}

// Assign makes a the set of instances to run: it starts those missing and
// stops those not listed. It returns false, and changes nothing, when a's
// (term, index) stamp is older than the newest applied one (the term is
// compared first), or after StopAll. A set with the same stamp as the
// newest is applied again. The stamp is written to the state file before
// Assign returns, so the fence survives a restart. Assign keeps no
// reference to a. An instance that is already running keeps its process
// when its template changed; the new template applies at its next start.
func (d *Driver) Assign(a *pb.Assignments) bool {
	d.mu.Lock()
	if d.closed || a.GetTerm() < d.term || (a.GetTerm() == d.term && a.GetIndex() < d.index) {
		d.mu.Unlock()
		return false
	}
	d.term, d.index = a.GetTerm(), a.GetIndex()
	d.assigned = true
	d.gen++
	want := make(map[string]*pb.Assignment, len(a.GetInstances()))
	for _, as := range a.GetInstances() {
		want[as.GetInstance()] = as
	}
	changed := false
	for id, as := range want {
		in := d.instances[id]
		if in == nil {
			in = &instance{
				id:      id,
				kick:    make(chan struct{}, 1),
				state:   pb.InstanceState_INSTANCE_STATE_PENDING,
				since:   d.cfg.Now(),
				message: "waiting to be started",
			}
			d.instances[id] = in
			changed = true
		}
		if in.pool != as.GetPool() {
			in.pool = as.GetPool()
			changed = true
		}
		in.tmpl = proto.CloneOf(as.GetTemplate())
		in.wanted = true
	}
	for id, in := range d.instances {
		if _, ok := want[id]; !ok {
			in.wanted = false
		}
		if !in.supervised && !d.running && in.proc == nil && !in.wanted {
			// Nothing runs and nobody would start it: forget it now.
			delete(d.instances, id)
			changed = true
			continue
		}
		d.superviseLocked(in)
		kick(in)
	}
	if changed {
		d.notifyLocked()
	}
	d.mu.Unlock()
	if err := d.save(); err != nil {
		d.log.Error("cannot save the assignment stamp", "term", a.GetTerm(), "index", a.GetIndex(), "err", err)
	}
	return true
}

// Report returns every instance the driver has, in id order: starting,
// running, waiting to be restarted or stopping, and PENDING for one
// assigned but not started yet (until Run starts it). The caller owns the
// result.
func (d *Driver) Report() *pb.InstanceReport {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := &pb.InstanceReport{Instances: make([]*pb.InstanceStatus, 0, len(d.instances))}
	for _, in := range d.instances {
		s := &pb.InstanceStatus{
			Id:       in.id,
			Pool:     in.pool,
			State:    in.state,
			Since:    timestamppb.New(in.since),
			ExitCode: in.exitCode,
			Restarts: in.restarts,
			Message:  in.message,
		}
		if in.port != 0 {
			s.Address = d.address(in.port)
		}
		if in.proc != nil && !in.proc.exited() {
			s.Pid = uint32(in.proc.pid)
		}
		r.Instances = append(r.Instances, s)
	}
	slices.SortFunc(r.Instances, func(a, b *pb.InstanceStatus) int { return strings.Compare(a.Id, b.Id) })
	return r
}

// Changed returns a channel that is closed at the next change of what
// Report returns, other than a change of `since` alone.
func (d *Driver) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.changed
}

// stopAllPoll is how often StopAll looks for instances left without a
// supervisor (when a Run ends meanwhile).
const stopAllPoll = 50 * time.Millisecond

// StopAll stops every instance (its stop signal, its grace, then SIGKILL)
// and returns once all have exited, or when ctx is done. Nothing is started
// afterwards: Assign returns false from then on. It works with or without
// Run.
func (d *Driver) StopAll(ctx context.Context) {
	var wg sync.WaitGroup
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	t := time.NewTicker(stopAllPoll)
	defer t.Stop()
	for ctx.Err() == nil {
		d.mu.Lock()
		if len(d.instances) == 0 {
			d.mu.Unlock()
			break
		}
		for _, in := range d.instances {
			if !in.supervised {
				in.supervised = true
				wg.Add(1)
				go d.supervise(ctx, in, &wg)
			}
			kick(in)
		}
		ch := d.changed
		d.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-ch:
		case <-t.C:
		}
	}
	wg.Wait()
	if err := d.save(); err != nil {
		d.log.Error("cannot save state", "err", err)
	}
}

// kick wakes in's supervisor, if it sleeps.
func kick(in *instance) {
	select {
	case in.kick <- struct{}{}:
	default:
	}
}

// notifyLocked records a change of what Report returns.
func (d *Driver) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
	d.gen++
}

// setStateLocked sets in's state and message; since moves only with the
// state.
func (d *Driver) setStateLocked(in *instance, s pb.InstanceState, msg string) {
	if in.state == s && in.message == msg {
		return
	}
	if in.state != s {
		in.state, in.since = s, d.cfg.Now()
	}
	in.message = msg
	d.notifyLocked()
}

func (d *Driver) address(port int) string {
	return net.JoinHostPort(d.cfg.AdvertiseAddr, strconv.Itoa(port))
}

// save writes the state file unless a write at least as new happened.
func (d *Driver) save() error {
	d.mu.Lock()
	gen := d.gen
	st := &stateFile{Version: stateVersion, Term: d.term, Index: d.index, Instances: []stateInstance{}}
	for _, in := range d.instances {
		if in.proc == nil || in.proc.exited() {
			continue
		}
		var tmpl []byte
		if in.tmpl != nil {
			var err error
			if tmpl, err = protojson.Marshal(in.tmpl); err != nil {
				d.mu.Unlock()
				return fmt.Errorf("driver: encode template of %s: %w", in.id, err)
			}
		}
		st.Instances = append(st.Instances, stateInstance{
			ID: in.id, Pool: in.pool, Template: tmpl, Port: in.port,
			PID: in.proc.pid, StartTicks: in.proc.ticks, Restarts: in.restarts,
		})
	}
	d.mu.Unlock()
	slices.SortFunc(st.Instances, func(a, b stateInstance) int { return strings.Compare(a.ID, b.ID) })

	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	if gen <= d.savedGen {
		return nil
	}
	d.saving.Store(time.Now().UnixNano())
	err := writeState(d.statePath, st)
	d.saving.Store(0)
	if err != nil {
		return fmt.Errorf("driver: write state %s: %w", d.statePath, err)
	}
	d.savedGen = gen
	return nil
}

// SaveInProgress is how long the write of the state file under way has
// run, zero when none runs: seconds mean the data directory's disk is
// stalled, and the assignments wait for it.
func (d *Driver) SaveInProgress() time.Duration {
	began := d.saving.Load()
	if began == 0 {
		return 0
	}
	return time.Since(time.Unix(0, began))
}

// rotateLogs bounds the log files of every instance with a process.
func (d *Driver) rotateLogs() {
	d.mu.Lock()
	ids := make([]string, 0, len(d.instances))
	for id, in := range d.instances {
		if in.proc != nil && checkID(id) == nil {
			ids = append(ids, id)
		}
	}
	d.mu.Unlock()
	for _, id := range ids {
		for _, name := range []string{"stdout.log", "stderr.log"} {
			if err := rotateLog(filepath.Join(d.dir, id, name), d.cfg.LogMaxBytes); err != nil {
				d.log.Warn("cannot rotate log", "instance", id, "file", name, "err", err)
			}
		}
	}
}

// checkID refuses instance ids that cannot name a directory of their own.
func checkID(id string) error {
	if id == "" || id == "." || id == ".." || len(id) > 200 {
		return fmt.Errorf("invalid instance id %q", id)
	}
	for _, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return fmt.Errorf("invalid instance id %q", id)
		}
	}
	return nil
}
