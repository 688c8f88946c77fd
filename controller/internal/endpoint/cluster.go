package endpoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/fsm"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// ReachableWithin is how recent a successful probe of a member's API must
// be for the member to count as reachable.
const ReachableWithin = 3 * time.Second

// snapshotChunk is the size of the chunks SaveSnapshot streams.
const snapshotChunk = 256 << 10

// Cluster serves hostscale.v1.ClusterService.
type Cluster struct {
	pb.UnimplementedClusterServiceServer
	Core *Core
	// LastReached returns when this node last reached a member's API.
	LastReached func(id string) time.Time
	// MembershipTimeout bounds a membership change.
	MembershipTimeout time.Duration
	// Stabilization: a new voter joins as a non-voter, promoted once it
	// has been caught up and healthy this long (Promoter); 0 adds voters
	// at once.
	Stabilization time.Duration
	// Promotion, when set, says why a member waiting for promotion is not
	// a voter yet (Promoter.Why); it is asked on the leader only.
	Promotion func(id string) string
}

var _ pb.ClusterServiceServer = (*Cluster)(nil)

func raftStateOf(s raft.RaftState) pb.RaftState {
	switch s {
	case raft.Follower:
		return pb.RaftState_RAFT_STATE_FOLLOWER
	case raft.Candidate:
		return pb.RaftState_RAFT_STATE_CANDIDATE
	case raft.Leader:
		return pb.RaftState_RAFT_STATE_LEADER
	case raft.Shutdown:
		return pb.RaftState_RAFT_STATE_SHUTDOWN
	}
	return pb.RaftState_RAFT_STATE_UNSPECIFIED
}

func suffrageOf(s raft.ServerSuffrage) pb.Suffrage {
	switch s {
	case raft.Voter:
		return pb.Suffrage_SUFFRAGE_VOTER
	case raft.Nonvoter:
		return pb.Suffrage_SUFFRAGE_NONVOTER
	case raft.Staging:
		return pb.Suffrage_SUFFRAGE_STAGING
	}
	return pb.Suffrage_SUFFRAGE_UNSPECIFIED
}

// members lists the Raft configuration as this node knows it, with what the
// state and the prober add.
func (s *Cluster) members() ([]*pb.Member, uint64, error) {
	f := s.Core.Raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, 0, raftError("get configuration", err)
	}
	_, leaderID := s.Core.Raft.LeaderWithID()
	var out []*pb.Member
	idx := s.Core.FSM.Read(func(st *pb.State) {
		for _, srv := range f.Configuration().Servers {
			id := string(srv.ID)
			m := &pb.Member{
				Id:          id,
				Suffrage:    suffrageOf(srv.Suffrage),
				RaftAddress: string(srv.Address),
				Leader:      srv.ID == leaderID,
			}
			if rec := st.Members[id]; rec != nil {
				m.ApiAddress = rec.ApiAddress
				m.Promoting = rec.VoterPending && srv.Suffrage != raft.Voter
				if m.Promoting && s.Promotion != nil && s.Core.IsLeader() {
					m.Promotion = s.Promotion(id)
				}
			}
			if id == s.Core.ID {
				m.ApiAddress, m.Reachable = s.Core.APIAddr, true
				m.LastReached = timestamppb.Now()
			} else if t := s.LastReached(id); !t.IsZero() {
				m.LastReached = timestamppb.New(t)
				m.Reachable = time.Since(t) < ReachableWithin
			}
			out = append(out, m)
		}
	})
	return out, idx, nil
}

// FailureTolerance is how many more voters among members can fail before
// the cluster stops committing: the reachable voters less a quorum of all.
func FailureTolerance(members []*pb.Member) uint32 {
	voters, reached := 0, 0
	for _, m := range members {
		if m.Suffrage == pb.Suffrage_SUFFRAGE_VOTER {
			voters++
			if m.Reachable {
				reached++
			}
		}
	}
	return uint32(max(0, reached-(voters/2+1)))
}

// FailureTolerance is FailureTolerance of this node's view of the members.
func (s *Cluster) FailureTolerance() (uint32, error) {
	members, _, err := s.members()
	if err != nil {
		return 0, err
	}
	return FailureTolerance(members), nil
}

func (s *Cluster) GetStatus(ctx context.Context, _ *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	r := s.Core.Raft
	members, idx, err := s.members()
	if err != nil {
		return nil, err
	}
	stats := r.Stats()
	resp := &pb.GetStatusResponse{
		Id:                s.Core.ID,
		State:             raftStateOf(r.State()),
		Leader:            &pb.LeaderInfo{},
		Term:              r.CurrentTerm(),
		CommitIndex:       r.CommitIndex(),
		AppliedIndex:      r.AppliedIndex(),
		LastLogIndex:      r.LastIndex(),
		LastSnapshotIndex: parseUint(stats["last_snapshot_index"]),
		Members:           members,
		Index:             idx,
		LeaderReady:       s.Core.IsLeader() && s.Core.LeaderReady(),
		FailureTolerance:  FailureTolerance(members),
	}
	if resp.State != pb.RaftState_RAFT_STATE_LEADER {
		if lc := r.LastContact(); !lc.IsZero() {
			resp.LastContact = durationpb.New(time.Since(lc))
		}
	}
	addr, id := r.LeaderWithID()
	resp.Leader.Id, resp.Leader.RaftAddress = string(id), string(addr)
	for _, m := range members {
		if m.Id == string(id) {
			resp.Leader.ApiAddress = m.ApiAddress
		}
	}
	return resp, nil
}

func parseUint(s string) uint64 {
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}

func (s *Cluster) ListMembers(ctx context.Context, req *pb.ListMembersRequest) (*pb.ListMembersResponse, error) {
	resp := &pb.ListMembersResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	members, idx, err := s.members()
	if err != nil {
		return nil, err
	}
	resp.Members, resp.Index = members, idx
	return resp, nil
}

func (s *Cluster) AddMember(ctx context.Context, req *pb.AddMemberRequest) (*pb.AddMemberResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("id", req.Id); err != nil {
		return nil, err
	}
	if err := checkAddress("raft_address", req.RaftAddress); err != nil {
		return nil, err
	}
	if req.ApiAddress != "" {
		if err := checkAddress("api_address", req.ApiAddress); err != nil {
			return nil, err
		}
	}
	resp := &pb.AddMemberResponse{}
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	r := s.Core.Raft
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, raftError("get configuration", err)
	}
	var current *raft.Server
	for _, srv := range cf.Configuration().Servers {
		switch {
		case string(srv.ID) == req.Id:
			current = &srv
		case strings.EqualFold(string(srv.Address), req.RaftAddress):
			return nil, status.Errorf(codes.AlreadyExists, "raft_address: %s is already used by member %q", req.RaftAddress, srv.ID)
		}
	}
	isVoter := current != nil && current.Suffrage == raft.Voter
	// A new voter joins as a non-voter, which the leader promotes once it
	// has caught up and stayed healthy (Promoter): a voter that cannot
	// yet take its share of the log would raise the quorum before it can
	// be part of one.
	stage := !req.Nonvoter && !isVoter && s.Stabilization > 0
	resp.Index = cf.Index()
	var f raft.IndexFuture
	switch {
	case current == nil || string(current.Address) != req.RaftAddress:
		if req.Nonvoter || stage {
			f = r.AddNonvoter(raft.ServerID(req.Id), raft.ServerAddress(req.RaftAddress), 0, s.MembershipTimeout)
		} else {
			f = r.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.RaftAddress), 0, s.MembershipTimeout)
		}
	case !req.Nonvoter && !isVoter && !stage:
		f = r.AddVoter(raft.ServerID(req.Id), raft.ServerAddress(req.RaftAddress), 0, s.MembershipTimeout)
	}
	if f != nil {
		if err := f.Error(); err != nil {
			return nil, raftError("add member", err)
		}
		resp.Index = f.Index()
	}
	resp.Promoting = stage
	var pending bool
	s.Core.FSM.Read(func(st *pb.State) { pending = st.Members[req.Id].GetVoterPending() })
	cmd := &pb.SetMemberCommand{Member: &pb.MemberRecord{Id: req.Id, ApiAddress: req.ApiAddress}}
	if pending != stage {
		cmd.VoterPending = &stage
	}
	if req.ApiAddress != "" || cmd.VoterPending != nil {
		res, err := s.Core.Apply(&pb.Command{RequestId: id, Command: &pb.Command_SetMember{SetMember: cmd}})
		if err != nil {
			return nil, err
		}
		resp.Index = max(resp.Index, res.Index)
	}
	return resp, nil
}

func (s *Cluster) RemoveMember(ctx context.Context, req *pb.RemoveMemberRequest) (*pb.RemoveMemberResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if req.Id == "" {
		return nil, invalid("id", "must not be empty")
	}
	resp := &pb.RemoveMemberResponse{}
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	r := s.Core.Raft
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, raftError("get configuration", err)
	}
	found := false
	for _, srv := range cf.Configuration().Servers {
		found = found || string(srv.ID) == req.Id
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "member %q is not in the cluster", req.Id)
	}
	index, err := removeMember(s.Core, id, req.Id, s.MembershipTimeout)
	if err != nil {
		return nil, err
	}
	resp.Index = index
	return resp, nil
}

// removeMember forgets member's record, then removes it from the Raft
// configuration, on the leader; it returns the configuration's index.
func removeMember(core *Core, requestID, member string, timeout time.Duration) (uint64, error) {
	// Forget the member's record first: once the leader removes itself it
	// can no longer write.
	if _, err := core.Apply(&pb.Command{
		RequestId: requestID,
		Command:   &pb.Command_DeleteMember{DeleteMember: &pb.DeleteMemberCommand{Id: member}},
	}); err != nil {
		return 0, err
	}
	f := core.Raft.RemoveServer(raft.ServerID(member), 0, timeout)
	if err := f.Error(); err != nil {
		return 0, raftError("remove member", err)
	}
	return f.Index(), nil
}

func (s *Cluster) TransferLeadership(ctx context.Context, req *pb.TransferLeadershipRequest) (*pb.TransferLeadershipResponse, error) {
	if _, err := requestID(req.RequestId); err != nil {
		return nil, err
	}
	resp := &pb.TransferLeadershipResponse{}
	if fwd, err := s.Core.LeaderOnly(ctx, req, resp); fwd {
		return orNil(resp, err)
	}
	r := s.Core.Raft
	var f raft.Future
	if req.Id == "" {
		f = r.LeadershipTransfer()
	} else {
		if req.Id == s.Core.ID {
			return nil, status.Errorf(codes.FailedPrecondition, "id: %q already leads", req.Id)
		}
		cf := r.GetConfiguration()
		if err := cf.Error(); err != nil {
			return nil, raftError("get configuration", err)
		}
		var target *raft.Server
		for _, srv := range cf.Configuration().Servers {
			if string(srv.ID) == req.Id {
				target = &srv
			}
		}
		if target == nil {
			return nil, status.Errorf(codes.NotFound, "id: member %q is not in the cluster", req.Id)
		}
		if target.Suffrage != raft.Voter {
			return nil, status.Errorf(codes.FailedPrecondition, "id: member %q does not vote", req.Id)
		}
		f = r.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := f.Error(); err != nil {
		return nil, raftError("transfer leadership", err)
	}
	// Report the leader once one is known again.
	deadline := time.Now().Add(s.MembershipTimeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if _, id := r.LeaderWithID(); id != "" && string(id) != s.Core.ID {
			resp.LeaderId = string(id)
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	return resp, nil
}

func (s *Cluster) SaveSnapshot(_ *pb.SaveSnapshotRequest, stream pb.ClusterService_SaveSnapshotServer) error {
	st := s.Core.FSM.Clone()
	data, err := fsm.Encode(st)
	if err != nil {
		return status.Errorf(codes.Internal, "encode snapshot: %v", err)
	}
	sum := sha256.Sum256(data)
	if err := stream.Send(&pb.SaveSnapshotResponse{Payload: &pb.SaveSnapshotResponse_Metadata{Metadata: &pb.SnapshotMetadata{
		Index:  st.AppliedIndex,
		Term:   st.AppliedTerm,
		Size:   uint64(len(data)),
		Sha256: hex.EncodeToString(sum[:]),
		Time:   timestamppb.Now(),
	}}}); err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), snapshotChunk)
		if err := stream.Send(&pb.SaveSnapshotResponse{Payload: &pb.SaveSnapshotResponse_Chunk{Chunk: data[:n]}}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (s *Cluster) RestoreSnapshot(stream pb.ClusterService_RestoreSnapshotServer) error {
	var buf bytes.Buffer
	want := ""
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if m.Sha256 != "" {
			want = strings.ToLower(m.Sha256)
		}
		if buf.Len()+len(m.Chunk) > fsm.MaxSnapshotSize {
			return status.Errorf(codes.ResourceExhausted, "chunk: snapshot larger than %d bytes", fsm.MaxSnapshotSize)
		}
		buf.Write(m.Chunk)
	}
	data := buf.Bytes()
	if want != "" {
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != want {
			return invalid("sha256", "the snapshot's SHA-256 is %x, not %s", sum, want)
		}
	}
	if len(data) == 0 {
		return invalid("chunk", "the snapshot is empty")
	}
	if _, err := fsm.Decode(bytes.NewReader(data)); err != nil {
		return invalid("chunk", "%v", err)
	}
	if !s.Core.IsLeader() {
		resp, err := s.forwardRestore(stream.Context(), data)
		if err != nil {
			return err
		}
		return stream.SendAndClose(resp)
	}
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: int64(len(data))}
	if err := s.Core.Raft.Restore(meta, bytes.NewReader(data), s.MembershipTimeout); err != nil {
		return raftError("restore snapshot", err)
	}
	return stream.SendAndClose(&pb.RestoreSnapshotResponse{Index: s.Core.Raft.AppliedIndex(), Size: uint64(len(data))})
}

func (s *Cluster) forwardRestore(ctx context.Context, data []byte) (*pb.RestoreSnapshotResponse, error) {
	conn, octx, err := s.Core.LeaderConn(ctx)
	if err != nil {
		return nil, err
	}
	cs, err := pb.NewClusterServiceClient(conn).RestoreSnapshot(octx)
	if err != nil {
		return nil, err
	}
	for len(data) > 0 {
		n := min(len(data), snapshotChunk)
		if err := cs.Send(&pb.RestoreSnapshotRequest{Chunk: data[:n]}); err != nil {
			break // the leader's error comes from CloseAndRecv
		}
		data = data[n:]
	}
	return cs.CloseAndRecv()
}
