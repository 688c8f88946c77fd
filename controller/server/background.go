package server

import (
	"context"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// announce keeps this node's API address in the replicated state, so that
// followers can forward to it and GetStatus can show it. The leader writes
// its own record; a follower asks the leader with AddMember. Until the
// record is there it checks often (the checks are local until a leader is
// known, and clients wait on the result after every election); then every
// few seconds, in case a restore replaced it.
func (s *Server) announce(ctx context.Context) {
	const minBackoff, maxBackoff, recheck = 25 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second
	backoff := minBackoff
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.announced() {
			backoff = minBackoff
			t.Reset(recheck)
			continue
		}
		if err := s.announceOnce(ctx); err != nil {
			s.logger.Debug("announce api address", "err", err)
		}
		t.Reset(backoff)
		backoff = min(2*backoff, maxBackoff)
	}
}

func (s *Server) announced() bool {
	ok := false
	s.fsm.Read(func(st *pb.State) {
		m := st.Members[s.cfg.ID]
		ok = m != nil && m.ApiAddress == s.APIAddr()
	})
	return ok
}

func (s *Server) announceOnce(ctx context.Context) error {
	if s.core.IsLeader() {
		if !s.leader.Ready() {
			return nil
		}
		_, err := s.core.Apply(&pb.Command{Command: &pb.Command_SetMember{SetMember: &pb.SetMemberCommand{
			Member: &pb.MemberRecord{Id: s.cfg.ID, ApiAddress: s.APIAddr()},
		}}})
		return err
	}
	if !s.inConfiguration() {
		return nil // not a member yet: AddMember on the leader will add it
	}
	_, addr, err := s.core.LeaderAPI()
	if err != nil {
		return err
	}
	conn, err := s.conns.Get(addr)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = pb.NewClusterServiceClient(conn).AddMember(cctx, &pb.AddMemberRequest{
		Id:          s.cfg.ID,
		RaftAddress: s.RaftAddr(),
		ApiAddress:  s.APIAddr(),
	})
	return err
}

func (s *Server) inConfiguration() bool {
	f := s.node.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == s.cfg.ID {
			return true
		}
	}
	return false
}

// probe checks every other member's API with the gRPC health service, so
// that GetStatus can say which members this node reaches.
func (s *Server) probe(ctx context.Context) {
	t := time.NewTicker(s.cfg.ProbeInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f := s.node.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		addrs := map[string]string{}
		s.fsm.Read(func(st *pb.State) {
			for _, srv := range f.Configuration().Servers {
				if m := st.Members[string(srv.ID)]; m != nil && string(srv.ID) != s.cfg.ID {
					addrs[m.Id] = m.ApiAddress
				}
			}
		})
		for id, addr := range addrs {
			go s.probeOne(ctx, id, addr)
		}
	}
}

func (s *Server) probeOne(ctx context.Context, id, addr string) {
	conn, err := s.conns.Get(addr)
	if err != nil {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeInterval)
	defer cancel()
	resp, err := grpc_health_v1.NewHealthClient(conn).Check(cctx, &grpc_health_v1.HealthCheckRequest{})
	if err != nil || resp.Status != grpc_health_v1.HealthCheckResponse_SERVING {
		return
	}
	s.reachMu.Lock()
	s.reached[id] = time.Now()
	s.reachMu.Unlock()
}

func (s *Server) lastReached(id string) time.Time {
	s.reachMu.Lock()
	defer s.reachMu.Unlock()
	return s.reached[id]
}

// IsLeader reports whether this controller leads and has caught up.
func (s *Server) IsLeader() bool { return s.leader.Ready() }

// Raft exposes the Raft node for tests and tools in this module.
func (s *Server) Raft() *raft.Raft { return s.node.Raft }

// nodeStatuses lists every node's status from the local state.
func (s *Server) nodeStatuses() map[string]pb.NodeStatus {
	out := map[string]pb.NodeStatus{}
	s.fsm.Read(func(st *pb.State) {
		for name, n := range st.Nodes {
			out[name] = n.Status
		}
	})
	return out
}

func (s *Server) setNodeStatus(_ context.Context, node string, status pb.NodeStatus) error {
	_, err := s.core.Apply(&pb.Command{Command: &pb.Command_SetNodeStatus{SetNodeStatus: &pb.SetNodeStatusCommand{
		Node: node, Status: status,
	}}})
	return err
}

// TableAck returns the table version a balancer last acknowledged to this
// controller.
func (s *Server) TableAck(balancer string) (*pb.TableVersion, bool) {
	a, ok := s.acks.Get(balancer)
	return a.Version, ok
}
