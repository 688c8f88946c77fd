package fsm

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type applier struct {
	t     *testing.T
	f     *FSM
	index uint64
}

func (a *applier) apply(cmd *pb.Command) *Result {
	a.t.Helper()
	if cmd.Time == nil {
		cmd.Time = timestamppb.New(epoch.Add(time.Duration(a.index) * time.Second))
	}
	data, err := proto.Marshal(cmd)
	require.NoError(a.t, err)
	a.index++
	return a.f.Apply(&raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data}).(*Result)
}

func createPool(id, name string) *pb.Command {
	return &pb.Command{RequestId: id, Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{
		Pool: &pb.Pool{Name: name, PathPrefix: "/" + name},
	}}}
}

func addBackend(id, pool, addr string) *pb.Command {
	return &pb.Command{RequestId: id, Command: &pb.Command_AddBackend{AddBackend: &pb.AddBackendCommand{
		Pool: pool, Backend: &pb.Backend{Address: addr, Weight: 1},
	}}}
}

func TestFSM_Apply_repeatedRequestIDAppliesOnce(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	first := a.apply(createPool("r1", "web"))
	require.NoError(t, first.Err)
	require.False(t, first.Repeated)

	again := a.apply(createPool("r1", "web"))
	require.NoError(t, again.Err, "a retry answers the first outcome, not ALREADY_EXISTS")
	require.True(t, again.Repeated)
	require.Equal(t, first.Index, again.Index)

	// A repeated failure is answered with the same error.
	bad := a.apply(addBackend("r2", "missing", "10.0.0.1:80"))
	require.Equal(t, codes.NotFound, status.Code(bad.Err))
	a.apply(createPool("", "missing")) // would make r2 succeed if it ran again
	badAgain := a.apply(addBackend("r2", "missing", "10.0.0.1:80"))
	require.True(t, badAgain.Repeated)
	require.Equal(t, codes.NotFound, status.Code(badAgain.Err))
	require.Equal(t, bad.Index, badAgain.Index)

	// The same effect under a new id is applied (and fails on its own).
	other := a.apply(createPool("r3", "web"))
	require.Equal(t, codes.AlreadyExists, status.Code(other.Err))

	a.f.Read(func(s *pb.State) {
		require.Len(t, s.Pools, 2)
		require.Equal(t, first.Index, s.Pools["web"].CreateIndex)
		require.Empty(t, s.Pools["missing"].Backends)
	})
}

func TestFSM_Apply_batchAppliesEachCommandInOrderWithItsOwnResult(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	batch := &pb.Command{Command: &pb.Command_Batch{Batch: &pb.CommandBatch{Commands: []*pb.Command{
		createPool("b1", "web"),
		addBackend("b2", "web", "10.0.0.1:80"), // sees the pool the command before it made
		createPool("b3", "web"),                // fails alone
		createPool("b1", "api"),                // a repeated id: the first outcome, not applied
		createPool("b4", "api"),
	}}}}
	for _, c := range batch.GetBatch().Commands {
		c.Time = timestamppb.New(epoch)
	}
	data, err := proto.Marshal(batch)
	require.NoError(t, err)
	out := a.f.Apply(&raft.Log{Index: 7, Term: 2, Type: raft.LogCommand, Data: data})
	rs, ok := out.([]*Result)
	require.True(t, ok, "a batch answers one result per command, got %T", out)
	require.Len(t, rs, 5)
	require.NoError(t, rs[0].Err)
	require.NoError(t, rs[1].Err)
	require.Equal(t, codes.AlreadyExists, status.Code(rs[2].Err))
	require.NoError(t, rs[3].Err)
	require.True(t, rs[3].Repeated)
	require.NoError(t, rs[4].Err)
	for _, r := range rs {
		require.EqualValues(t, 7, r.Index)
	}
	a.f.Read(func(s *pb.State) {
		require.Len(t, s.Pools, 2)
		require.Len(t, s.Pools["web"].Backends, 1)
		require.EqualValues(t, 7, s.AppliedIndex)
		require.EqualValues(t, 7, s.PoolsIndex)
	})
	// The batch's request ids are remembered like any others.
	again := a.apply(createPool("b4", "api"))
	require.True(t, again.Repeated)
	require.EqualValues(t, 7, again.Index)

	// A batch inside a batch is not something this controller writes.
	nested, err := proto.Marshal(&pb.Command{Command: &pb.Command_Batch{Batch: &pb.CommandBatch{Commands: []*pb.Command{batch}}}})
	require.NoError(t, err)
	require.Panics(t, func() { a.f.Apply(&raft.Log{Index: 9, Term: 2, Type: raft.LogCommand, Data: nested}) })
}

func TestFSM_Apply_requestIDsExpireByCountAndAge(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	a.apply(&pb.Command{RequestId: "old", Time: timestamppb.New(epoch), Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: &pb.Pool{Name: "a", PathPrefix: "/a"}}}})
	a.apply(&pb.Command{RequestId: "new", Time: timestamppb.New(epoch.Add(RequestTTL)), Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: &pb.Pool{Name: "b", PathPrefix: "/b"}}}})
	a.apply(&pb.Command{RequestId: "newest", Time: timestamppb.New(epoch.Add(RequestTTL + time.Second)), Command: &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: "b"}}})
	var ids []string
	for _, r := range a.f.Clone().Requests {
		ids = append(ids, r.RequestId)
	}
	require.Equal(t, []string{"new", "newest"}, ids, "ids older than the TTL by command time are forgotten")

	b := &applier{t: t, f: New(nil)}
	for i := range MaxRequests + 10 {
		b.apply(&pb.Command{RequestId: fmt.Sprint(i), Time: timestamppb.New(epoch), Command: &pb.Command_DeleteMember{DeleteMember: &pb.DeleteMemberCommand{Id: "x"}}})
	}
	st := b.f.Clone()
	require.Len(t, st.Requests, MaxRequests)
	require.Equal(t, "10", st.Requests[0].RequestId)
	require.Len(t, b.f.requests, MaxRequests)
	require.Less(t, len(b.f.reqs), 2*MaxRequests, "the expired head is dropped")
}

func TestFSM_SnapshotRestore_roundTripsTheWholeState(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	a.apply(createPool("r1", "web"))
	a.apply(addBackend("r2", "web", "10.0.0.1:80"))
	a.apply(&pb.Command{RequestId: "r3", Command: &pb.Command_SetMember{SetMember: &pb.SetMemberCommand{Member: &pb.MemberRecord{Id: "c1", ApiAddress: "127.0.0.1:7700"}}}})

	snap, err := a.f.Snapshot()
	require.NoError(t, err)
	sink := &memSink{}
	require.NoError(t, snap.Persist(sink))
	require.True(t, sink.closed)

	restored := New(nil)
	require.NoError(t, restored.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	require.True(t, proto.Equal(a.f.Clone(), restored.Clone()))
	require.Equal(t, a.index, restored.Index())

	// The remembered request ids survive the round trip.
	b := &applier{t: t, f: restored, index: a.index}
	require.True(t, b.apply(addBackend("r2", "web", "10.0.0.1:80")).Repeated)
}

func TestFSM_Restore_ofAnEmptyStateAcceptsEveryCommand(t *testing.T) {
	data, err := Encode(&pb.State{})
	require.NoError(t, err)
	f := New(nil)
	require.NoError(t, f.Restore(io.NopCloser(bytes.NewReader(data))))
	a := &applier{t: t, f: f}
	for _, cmd := range []*pb.Command{
		createPool("", "web"),
		{Command: &pb.Command_SetMember{SetMember: &pb.SetMemberCommand{Member: &pb.MemberRecord{Id: "c1"}}}},
		{Command: &pb.Command_RegisterNode{RegisterNode: &pb.RegisterNodeCommand{Node: "n1"}}},
		{Command: &pb.Command_PutAlertRule{PutAlertRule: &pb.PutAlertRuleCommand{Rule: &pb.AlertRule{Name: "r"}, Create: true}}},
		{Command: &pb.Command_AlertTransitions{AlertTransitions: &pb.AlertTransitionsCommand{Alerts: []*pb.Alert{{Fingerprint: "1"}}}}},
		{Command: &pb.Command_PutSilence{PutSilence: &pb.PutSilenceCommand{Silence: &pb.Silence{Id: "s"}}}},
	} {
		require.NoError(t, a.apply(cmd).Err)
	}
}

func TestFSM_Restore_rejectsGarbageAndKeepsState(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	a.apply(createPool("r1", "web"))
	before := a.f.Clone()
	bad := []*pb.State{
		{Pools: map[string]*pb.Pool{"x": {Name: "y"}}},
		{Members: map[string]*pb.MemberRecord{"c1": {Id: "c2"}}},
		{Requests: []*pb.AppliedRequest{{RequestId: "a"}, {RequestId: "a"}}},
	}
	for i, st := range bad {
		data, err := Encode(st)
		require.NoError(t, err)
		require.Error(t, a.f.Restore(io.NopCloser(bytes.NewReader(data))), "case %d", i)
	}
	require.Error(t, a.f.Restore(io.NopCloser(bytes.NewReader([]byte("\xff\xff\xff\xff")))))
	require.True(t, proto.Equal(before, a.f.Clone()))
}

func TestFSM_Apply_undecodableCommandStopsTheNode(t *testing.T) {
	f := New(nil)
	require.Panics(t, func() {
		f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte("\xff\xff\xff")})
	})
	require.Panics(t, func() {
		data, _ := proto.Marshal(&pb.Command{RequestId: "x"}) // no command type: written by a newer version
		f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
	})
}

func TestFSM_CreatePool_rejectsATakenRoute(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	pool := func(name string, prefix string, hosts ...string) *pb.Command {
		return &pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: &pb.Pool{Name: name, PathPrefix: prefix, Hosts: hosts}}}}
	}
	require.NoError(t, a.apply(pool("a", "/", "a.example.com", "b.example.com")).Err)
	require.NoError(t, a.apply(pool("b", "/api", "a.example.com")).Err)
	require.NoError(t, a.apply(pool("c", "/")).Err, "any-host route differs from named hosts")
	res := a.apply(pool("d", "/", "b.example.com"))
	require.Equal(t, codes.FailedPrecondition, status.Code(res.Err))
	require.Contains(t, res.Err.Error(), `b.example.com / is already served by pool "a"`)
	require.Equal(t, codes.FailedPrecondition, status.Code(a.apply(pool("e", "/")).Err))
}

// A route is free again once its pool is deleted or moved to another,
// and a restored state's routes are taken.
func TestFSM_routesFollowPoolChanges(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	pool := func(name, prefix string, hosts ...string) *pb.Pool {
		return &pb.Pool{Name: name, PathPrefix: prefix, Hosts: hosts}
	}
	create := func(p *pb.Pool) error {
		return a.apply(&pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: p}}}).Err
	}
	update := func(p *pb.Pool) error {
		return a.apply(&pb.Command{Command: &pb.Command_UpdatePool{UpdatePool: &pb.UpdatePoolCommand{Pool: p}}}).Err
	}
	del := func(name string) error {
		return a.apply(&pb.Command{Command: &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: name}}}).Err
	}
	require.NoError(t, create(pool("a", "/", "x.example.com", "y.example.com")))
	require.Equal(t, codes.FailedPrecondition, status.Code(create(pool("b", "/", "y.example.com"))))
	require.NoError(t, update(pool("a", "/", "x.example.com")), "a pool may keep its own routes")
	require.NoError(t, create(pool("b", "/", "y.example.com")), "y.example.com / left pool a")
	require.Equal(t, codes.FailedPrecondition, status.Code(create(pool("c", "/", "x.example.com"))))
	require.NoError(t, update(pool("a", "/v2", "x.example.com")))
	require.NoError(t, create(pool("c", "/", "x.example.com")), "x.example.com / left pool a")
	require.NoError(t, del("b"))
	require.NoError(t, create(pool("d", "/", "y.example.com")), "pool b's route is free")
	require.Equal(t, codes.FailedPrecondition, status.Code(update(pool("d", "/v2", "x.example.com"))), "pool a serves it")

	snap, err := a.f.Snapshot()
	require.NoError(t, err)
	sink := &memSink{}
	require.NoError(t, snap.Persist(sink))
	restored := &applier{t: t, f: New(nil), index: a.index}
	require.NoError(t, restored.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	for _, r := range []*pb.Pool{pool("e", "/v2", "x.example.com"), pool("e", "/", "x.example.com"), pool("e", "/", "y.example.com")} {
		res := restored.apply(&pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: r}}})
		require.Equal(t, codes.FailedPrecondition, status.Code(res.Err), "%s %s", r.Hosts, r.PathPrefix)
	}
	require.NoError(t, restored.apply(&pb.Command{Command: &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: pool("e", "/")}}}).Err)
}

func TestFSM_Changed_closesOnApply(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	ch := a.f.Changed()
	select {
	case <-ch:
		t.Fatal("closed before any change")
	default:
	}
	a.apply(createPool("", "web"))
	select {
	case <-ch:
	default:
		t.Fatal("not closed after an apply")
	}
}

type memSink struct {
	bytes.Buffer
	closed bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { m.closed = true; return nil }

func FuzzDecode(f *testing.F) {
	st := &pb.State{Pools: map[string]*pb.Pool{"web": {Name: "web"}}, Requests: []*pb.AppliedRequest{{RequestId: "a"}}}
	data, _ := Encode(st)
	f.Add(data)
	f.Add([]byte{})
	f.Add([]byte("\x0a\x05hello"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		// Whatever decodes re-encodes and restores.
		out, err := Encode(s)
		require.NoError(t, err)
		require.NoError(t, New(nil).Restore(io.NopCloser(bytes.NewReader(out))))
	})
}

func FuzzApply(f *testing.F) {
	for _, c := range []*pb.Command{createPool("a", "web"), addBackend("b", "web", "1.2.3.4:5")} {
		c.Time = timestamppb.New(epoch)
		data, _ := proto.Marshal(c)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var cmd pb.Command
		if proto.Unmarshal(data, &cmd) != nil || cmd.Command == nil {
			return // the FSM stops on these by design
		}
		fsm := New(nil)
		// Any decodable command applies without panicking, twice.
		fsm.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		fsm.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
	})
}

// SetMember changes what its command sets: an empty api_address keeps the
// one kept, and voter_pending changes only when the command says.
func TestFSM_SetMember_mergesIntoTheRecord(t *testing.T) {
	a := &applier{t: t, f: New(nil)}
	set := func(id string, rec *pb.MemberRecord, pending *bool) {
		a.apply(&pb.Command{RequestId: id, Command: &pb.Command_SetMember{SetMember: &pb.SetMemberCommand{Member: rec, VoterPending: pending}}})
	}
	yes, no := true, false
	set("r1", &pb.MemberRecord{Id: "c4", ApiAddress: "127.0.0.1:7730"}, &yes)
	set("r2", &pb.MemberRecord{Id: "c4", ApiAddress: "127.0.0.1:7731"}, nil)
	got := a.f.Clone().Members["c4"]
	require.Equal(t, "127.0.0.1:7731", got.ApiAddress)
	require.True(t, got.VoterPending, "an announcement keeps the pending promotion")
	set("r3", &pb.MemberRecord{Id: "c4", VoterPending: false}, &no)
	got = a.f.Clone().Members["c4"]
	require.Equal(t, "127.0.0.1:7731", got.ApiAddress, "an empty address keeps the one kept")
	require.False(t, got.VoterPending)
}
