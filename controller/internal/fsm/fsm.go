package fsm

import (
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"

	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/logging"
)

// Retention of applied request ids: a retry is recognised while its id is
// among the newest MaxRequests and younger than RequestTTL (by command time).
const (
	MaxRequests = 65536
	RequestTTL  = time.Hour
)

// MaxSnapshotSize bounds a snapshot accepted by Restore.
const MaxSnapshotSize = 256 << 20

// Result is what Apply returns for each command, through raft's
// ApplyFuture.Response.
type Result struct {
	// Index is the Raft index the command was first applied at.
	Index uint64
	// Err is the command's outcome as a gRPC status error, nil when it took
	// effect.
	Err error
	// Repeated is set when the request id had been applied before and this
	// result is the remembered first one.
	Repeated bool
}

// FSM implements raft.FSM over a State. It is safe for concurrent use: raft
// applies from one goroutine while readers call Read.
type FSM struct {
	logger *slog.Logger

	mu    sync.RWMutex
	state *pb.State // state.Requests is kept in reqs, and set only in copies
	// reqs[head:] are the remembered requests, oldest first; the dead head
	// is dropped when it outgrows the live part, so expiry costs O(1)
	// amortised per apply.
	reqs     []*pb.AppliedRequest
	head     int
	requests map[string]*pb.AppliedRequest
	// routes indexes the pools by the routes they serve, for the check
	// that two pools never serve one route.
	routes  map[route]string
	changed chan struct{}
	watched bool // someone holds changed: replace it at the next change
	// tableDirty is set by a command that changed the balancers' table
	// beyond what changesPools tells from its type.
	tableDirty bool
	// byNode indexes state.Instances by node, so that what concerns one
	// node of a large fleet costs that node's instances only. Instances
	// never change node; placeInstances and deleteInstance keep it,
	// Restore rebuilds it.
	byNode map[string]map[string]*pb.Instance
	// assignWatch holds, per node, the channel AssignmentsChanged handed
	// out, closed by the next command that may change what that node's
	// agent must run; it is local to this process (not replicated).
	assignWatch map[string]chan struct{}
	// tokenByDigest indexes state.Tokens by their secrets' digests, for
	// the check of every call; Restore rebuilds it.
	tokenByDigest map[[sha256.Size]byte]string
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an FSM over an empty State. logger may be nil.
func New(logger *slog.Logger) *FSM {
	return &FSM{
		logger:      logging.OrDiscard(logger),
		state:       newState(),
		requests:    map[string]*pb.AppliedRequest{},
		routes:      map[route]string{},
		changed:     make(chan struct{}),
		assignWatch: map[string]chan struct{}{},
		byNode:      map[string]map[string]*pb.Instance{},

		tokenByDigest: map[[sha256.Size]byte]string{},
	}
}

func newState() *pb.State {
	st := &pb.State{}
	ensureMaps(st)
	return st
}

// ensureMaps gives a state every map it may be missing (a decoded State
// has none for empty maps), so that Apply can write into them.
func ensureMaps(st *pb.State) {
	if st.Members == nil {
		st.Members = map[string]*pb.MemberRecord{}
	}
	if st.Pools == nil {
		st.Pools = map[string]*pb.Pool{}
	}
	if st.Nodes == nil {
		st.Nodes = map[string]*pb.Node{}
	}
	if st.AlertRules == nil {
		st.AlertRules = map[string]*pb.AlertRule{}
	}
	if st.Alerts == nil {
		st.Alerts = map[string]*pb.Alert{}
	}
	if st.Silences == nil {
		st.Silences = map[string]*pb.Silence{}
	}
	if st.Instances == nil {
		st.Instances = map[string]*pb.Instance{}
	}
	if st.ScaleEvents == nil {
		st.ScaleEvents = map[string]*pb.ScaleEvents{}
	}
	if st.Tokens == nil {
		st.Tokens = map[string]*pb.Token{}
	}
}

// Read calls fn with the state and the index it reflects, under a read lock.
// fn must not modify the state nor retain any part of it.
func (f *FSM) Read(fn func(s *pb.State)) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state)
	return f.state.AppliedIndex
}

// ReadNode calls fn with the state and the instances placed on node (in
// no order), under a read lock, and returns the index they reflect. fn
// must not modify them nor retain any part of them.
func (f *FSM) ReadNode(node string, fn func(st *pb.State, instances map[string]*pb.Instance)) uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.state, f.byNode[node])
	return f.state.AppliedIndex
}

// Index is the Raft index of the last command applied.
func (f *FSM) Index() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.AppliedIndex
}

// Changed returns a channel that is closed at the next change of the state.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.watched = true
	return f.changed
}

// Clone returns a deep copy of the whole state.
func (f *FSM) Clone() *pb.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := proto.Clone(f.state).(*pb.State)
	// Applied requests are never modified once stored: share them.
	st.Requests = append([]*pb.AppliedRequest(nil), f.reqs[f.head:]...)
	return st
}

func (f *FSM) notifyLocked() {
	if f.watched {
		close(f.changed)
		f.changed = make(chan struct{})
		f.watched = false
	}
}

// Apply applies one committed log entry and returns a *Result.
func (f *FSM) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed entries in order under one lock and wakes
// watchers once (raft.BatchingFSM); it returns a *Result for each command
// entry, a []*Result for a CommandBatch entry (one per command, in order),
// and nil for entries that are not commands.
func (f *FSM) ApplyBatch(logs []*raft.Log) []any {
	cmds := make([]*pb.Command, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		cmds[i] = new(pb.Command)
		if err := proto.Unmarshal(l.Data, cmds[i]); err != nil {
			panic(fmt.Sprintf("fsm: cannot decode the command at index %d: %v", l.Index, err))
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.notifyLocked()
	out := make([]any, len(logs))
	for i, l := range logs {
		if cmds[i] == nil {
			continue
		}
		if b, ok := cmds[i].Command.(*pb.Command_Batch); ok {
			rs := make([]*Result, len(b.Batch.GetCommands()))
			for j, c := range b.Batch.GetCommands() {
				if _, nested := c.Command.(*pb.Command_Batch); nested {
					panic(fmt.Sprintf("fsm: the command batch at index %d holds a batch", l.Index))
				}
				rs[j] = f.applyLocked(l, c)
			}
			out[i] = rs
			continue
		}
		out[i] = f.applyLocked(l, cmds[i])
	}
	return out
}

func (f *FSM) applyLocked(l *raft.Log, cmd *pb.Command) *Result {
	f.state.AppliedIndex, f.state.AppliedTerm = l.Index, l.Term
	if id := cmd.GetRequestId(); id != "" {
		if prev, ok := f.requests[id]; ok {
			return &Result{Index: prev.Index, Err: errorOf(prev), Repeated: true}
		}
	}
	f.tableDirty = false
	var assigned []string
	if len(f.assignWatch) > 0 {
		// Before dispatch: a deletion takes the instances' nodes with it.
		assigned = f.assignedNodes(cmd)
	}
	err := f.dispatch(cmd, l.Index)
	if err == nil && (changesPools(cmd) || f.tableDirty) {
		f.state.PoolsIndex, f.state.PoolsTerm = l.Index, l.Term
	}
	if err == nil {
		for _, node := range assigned {
			if ch := f.assignWatch[node]; ch != nil {
				close(ch)
				delete(f.assignWatch, node)
			}
		}
	}
	if id := cmd.GetRequestId(); id != "" {
		f.remember(cmd, l.Index, err)
	}
	return &Result{Index: l.Index, Err: err}
}

func errorOf(r *pb.AppliedRequest) error {
	if r.Code == 0 {
		return nil
	}
	return status.Error(codes.Code(r.Code), r.Message)
}

// dispatch applies one command to the state. It returns the command's
// outcome; a command that decodes but names no known type stops the process.
func (f *FSM) dispatch(cmd *pb.Command, index uint64) error {
	switch c := cmd.Command.(type) {
	case *pb.Command_SetMember:
		return f.setMember(c.SetMember)
	case *pb.Command_DeleteMember:
		delete(f.state.Members, c.DeleteMember.GetId())
		return nil
	case *pb.Command_CreatePool:
		return f.createPool(c.CreatePool, index)
	case *pb.Command_DeletePool:
		return f.deletePool(c.DeletePool)
	case *pb.Command_AddBackend:
		return f.addBackend(c.AddBackend, index)
	case *pb.Command_RemoveBackend:
		return f.removeBackend(c.RemoveBackend, index)
	case *pb.Command_RegisterNode:
		return f.registerNode(c.RegisterNode, cmd, index)
	case *pb.Command_SetNodeStatus:
		return f.setNodeStatus(c.SetNodeStatus, cmd, index)
	case *pb.Command_PutAlertRule:
		return f.putAlertRule(c.PutAlertRule, index)
	case *pb.Command_DeleteAlertRule:
		return f.deleteAlertRule(c.DeleteAlertRule)
	case *pb.Command_AlertTransitions:
		return f.alertTransitions(c.AlertTransitions)
	case *pb.Command_InitAlertRules:
		return f.initAlertRules(c.InitAlertRules, index)
	case *pb.Command_RecordAlertDeliveries:
		return f.recordAlertDeliveries(c.RecordAlertDeliveries, cmd)
	case *pb.Command_PutSilence:
		return f.putSilence(c.PutSilence)
	case *pb.Command_DeleteSilence:
		return f.deleteSilence(c.DeleteSilence)
	case *pb.Command_ScalePool:
		return f.scalePool(c.ScalePool, index)
	case *pb.Command_PlaceInstances:
		return f.placeInstances(c.PlaceInstances, cmd, index)
	case *pb.Command_DrainInstances:
		return f.drainInstances(c.DrainInstances.GetInstances(), cmd, index, false)
	case *pb.Command_StopInstances:
		return f.drainInstances(c.StopInstances.GetInstances(), cmd, index, true)
	case *pb.Command_ReportInstances:
		return f.reportInstances(c.ReportInstances, index)
	case *pb.Command_DeleteInstances:
		for _, id := range c.DeleteInstances.GetInstances() {
			f.deleteInstance(id)
		}
		return nil
	case *pb.Command_DrainNode:
		return f.drainNode(c.DrainNode, cmd, index)
	case *pb.Command_RecordScaleEvent:
		return f.recordScaleEvent(c.RecordScaleEvent, cmd, index)
	case *pb.Command_RecordProviderResult:
		return f.recordProviderResult(c.RecordProviderResult)
	case *pb.Command_UpdatePool:
		return f.updatePool(c.UpdatePool, index)
	case *pb.Command_PutToken:
		return f.putToken(c.PutToken, cmd.Time)
	case *pb.Command_DeleteToken:
		return f.deleteToken(c.DeleteToken)
	case *pb.Command_SetInstanceWeights:
		return f.setInstanceWeights(c.SetInstanceWeights, index)
	default:
		panic(fmt.Sprintf("fsm: unknown command type at index %d (%T): a newer controller wrote it; upgrade this node", index, cmd.Command))
	}
}

// changesPools reports whether cmd is one that changes the balancers' table.
func changesPools(cmd *pb.Command) bool {
	switch cmd.Command.(type) {
	case *pb.Command_CreatePool, *pb.Command_UpdatePool, *pb.Command_DeletePool, *pb.Command_AddBackend, *pb.Command_RemoveBackend:
		return true
	}
	return false
}

// assignedNodes lists the nodes whose instances to run cmd may change (or
// their template), read from the state before cmd applies: those of the
// instances it places, stops or deletes, and those running a pool it
// updates or deletes. Nodes may repeat.
func (f *FSM) assignedNodes(cmd *pb.Command) []string {
	var nodes []string
	ofInstances := func(ids []string) {
		for _, id := range ids {
			if in := f.state.Instances[id]; in != nil {
				nodes = append(nodes, in.Node)
			}
		}
	}
	ofPool := func(pool string) {
		for _, in := range f.state.Instances {
			if in.Pool == pool {
				nodes = append(nodes, in.Node)
			}
		}
	}
	switch c := cmd.Command.(type) {
	case *pb.Command_PlaceInstances:
		for _, pl := range c.PlaceInstances.GetPlacements() {
			nodes = append(nodes, pl.GetNode())
		}
	case *pb.Command_StopInstances:
		ofInstances(c.StopInstances.GetInstances())
	case *pb.Command_DeleteInstances:
		ofInstances(c.DeleteInstances.GetInstances())
	case *pb.Command_UpdatePool:
		ofPool(c.UpdatePool.GetPool().GetName())
	case *pb.Command_DeletePool:
		ofPool(c.DeletePool.GetPool())
	}
	return nodes
}

// AssignmentsChanged returns a channel closed at the next change that may
// change the instances node's agent must run: a placement on it, a stop or
// deletion of one of its instances, an update or deletion of a pool it
// runs, a restore. Other nodes' changes, and every other write, leave it
// open, so that a fleet's streams wake only for what concerns each.
func (f *FSM) AssignmentsChanged(node string) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := f.assignWatch[node]
	if ch == nil {
		ch = make(chan struct{})
		f.assignWatch[node] = ch
	}
	return ch
}

func (f *FSM) remember(cmd *pb.Command, index uint64, err error) {
	st := status.Convert(err)
	r := &pb.AppliedRequest{
		RequestId: cmd.GetRequestId(),
		Index:     index,
		Code:      int32(st.Code()),
		Message:   st.Message(),
		Time:      cmd.GetTime(),
	}
	f.reqs = append(f.reqs, r)
	f.requests[r.RequestId] = r
	// Expire by count and by age; both read only command data, so every
	// replica expires the same entries.
	now := cmd.GetTime().AsTime()
	for f.head < len(f.reqs) {
		old := f.reqs[f.head]
		if len(f.reqs)-f.head <= MaxRequests && now.Sub(old.GetTime().AsTime()) <= RequestTTL {
			break
		}
		delete(f.requests, old.RequestId)
		f.reqs[f.head] = nil
		f.head++
	}
	if f.head > 1024 && f.head > len(f.reqs)/2 {
		f.reqs = append(f.reqs[:0:0], f.reqs[f.head:]...)
		f.head = 0
	}
}

// Snapshot returns a point-in-time copy of the state.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{state: f.Clone()}, nil
}

// Restore replaces the state with a snapshot written by Persist.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := Decode(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if st.AppliedIndex < f.state.AppliedIndex {
		// A restore from a backup: raft installs it above the current
		// index, so the index a read reports never goes back.
		st.AppliedIndex, st.AppliedTerm = f.state.AppliedIndex, f.state.AppliedTerm
	}
	f.reqs, f.head, st.Requests = st.Requests, 0, nil
	f.state = st
	f.reindexRoutes()
	f.byNode = map[string]map[string]*pb.Instance{}
	for _, in := range st.Instances {
		f.indexInstance(in)
	}
	f.tokenByDigest = make(map[[sha256.Size]byte]string, len(st.Tokens))
	for name, tok := range st.Tokens {
		if sum, ok := acl.ParseDigest(tok.SecretSha256); ok {
			f.tokenByDigest[sum] = name
		}
	}
	for node, ch := range f.assignWatch {
		close(ch)
		delete(f.assignWatch, node)
	}
	f.requests = make(map[string]*pb.AppliedRequest, len(f.reqs))
	for _, r := range f.reqs {
		f.requests[r.RequestId] = r
	}
	f.notifyLocked()
	f.logger.Info("state restored from snapshot", "index", st.AppliedIndex, "pools", len(st.Pools), "members", len(st.Members))
	return nil
}

// Decode reads a snapshot written by Persist and checks that it is a
// well-formed State.
func Decode(r io.Reader) (*pb.State, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSnapshotSize+1))
	if err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	if len(data) > MaxSnapshotSize {
		return nil, fmt.Errorf("snapshot larger than %d bytes", MaxSnapshotSize)
	}
	st := newState()
	if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	if err := checkState(st); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	ensureMaps(st)
	return st, nil
}

func checkState(st *pb.State) error {
	for k, m := range st.Members {
		if m.GetId() != k {
			return fmt.Errorf("member %q is stored under key %q", m.GetId(), k)
		}
	}
	for k, p := range st.Pools {
		if p.GetName() != k {
			return fmt.Errorf("pool %q is stored under key %q", p.GetName(), k)
		}
	}
	for k, n := range st.Nodes {
		if n.GetName() != k {
			return fmt.Errorf("node %q is stored under key %q", n.GetName(), k)
		}
	}
	for k, in := range st.Instances {
		if in.GetId() != k {
			return fmt.Errorf("instance %q is stored under key %q", in.GetId(), k)
		}
	}
	digests := map[string]bool{}
	for k, tok := range st.Tokens {
		if tok.GetName() != k {
			return fmt.Errorf("token %q is stored under key %q", tok.GetName(), k)
		}
		if digests[tok.GetSecretSha256()] {
			return fmt.Errorf("token %q has the secret of another", k)
		}
		digests[tok.GetSecretSha256()] = true
	}
	seen := map[string]bool{}
	for _, r := range st.Requests {
		if r.GetRequestId() == "" || seen[r.GetRequestId()] {
			return fmt.Errorf("request list holds an empty or repeated id %q", r.GetRequestId())
		}
		seen[r.GetRequestId()] = true
	}
	return nil
}

type snapshot struct{ state *pb.State }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	data, err := Encode(s.state)
	if err == nil {
		_, err = sink.Write(data)
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

// Encode is the snapshot encoding of a state: the State message, with map
// entries in a stable order.
func Encode(st *pb.State) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(st)
}
