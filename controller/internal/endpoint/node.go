package endpoint

import (
	"context"
	"encoding/base64"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/internal/labels"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Nodes serves hostscale.v1.NodeService. Registration, facts, labels and
// status come from the local state; the live fields (last heartbeat,
// latest sample) are the leader's, so a follower asks the leader and falls
// back to its own state without them when the leader cannot answer.
type Nodes struct {
	pb.UnimplementedNodeServiceServer
	Core *Core
	Hub  *agents.Hub
	// Leading reports whether this node is the ready leader.
	Leading func() bool
}

var _ pb.NodeServiceServer = (*Nodes)(nil)

// liveFromLeader forwards a read to the leader for its live fields. It
// reports whether resp was filled.
func (s *Nodes) liveFromLeader(ctx context.Context, req, resp proto.Message) bool {
	if s.Leading() {
		return false
	}
	if md := forwardedBy(ctx); md != "" {
		return false
	}
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return s.Core.forward(fctx, req, resp) == nil
}

// withLive returns a copy of n with the leader's live fields and its
// reservations (from fsm.Reserved).
func (s *Nodes) withLive(n *pb.Node, reserved map[string]*pb.InstanceResources) *pb.Node {
	n = proto.Clone(n).(*pb.Node)
	n.Reserved = proto.CloneOf(reserved[n.Name])
	if s.Leading() {
		if seen, latest := s.Hub.Live(n.Name); !seen.IsZero() {
			n.LastHeartbeat, n.Latest = timestamppb.New(seen), latest
			n.Conditions = s.Hub.Conditions(n.Name)
			if s.Hub.Connected(n.Name) {
				n.Controller = s.Core.ID
			}
		}
	}
	return n
}

func (s *Nodes) GetNode(ctx context.Context, req *pb.GetNodeRequest) (*pb.GetNodeResponse, error) {
	if err := checkName("node", req.Node); err != nil {
		return nil, err
	}
	resp := &pb.GetNodeResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	if s.liveFromLeader(ctx, req, resp) {
		return resp, nil
	}
	var n *pb.Node
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		if x := st.Nodes[req.Node]; x != nil {
			n = s.withLive(x, fsm.Reserved(st))
		}
	})
	if n == nil {
		return nil, status.Errorf(codes.NotFound, "node %q not found", req.Node)
	}
	resp.Node = n
	return resp, nil
}

func (s *Nodes) ListNodes(ctx context.Context, req *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	size, after, err := pageArgs(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	sel, err := labels.Parse(req.Selector)
	if err != nil {
		return nil, invalid("selector", "%v", err)
	}
	if _, ok := pb.NodeStatus_name[int32(req.Status)]; !ok {
		return nil, invalid("status", "unknown status %d", req.Status)
	}
	resp := &pb.ListNodesResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	if s.liveFromLeader(ctx, req, resp) {
		return resp, nil
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		var names []string
		for name, n := range st.Nodes {
			if name > after && (req.Status == pb.NodeStatus_NODE_STATUS_UNSPECIFIED || n.Status == req.Status) && sel.Matches(n.Labels) {
				names = append(names, name)
			}
		}
		slices.Sort(names)
		if len(names) > size {
			names = names[:size]
			resp.NextPageToken = pageToken(names[size-1])
		}
		reserved := fsm.Reserved(st)
		for _, name := range names {
			resp.Nodes = append(resp.Nodes, s.withLive(st.Nodes[name], reserved))
		}
	})
	return resp, nil
}

// pageToken is the next_page_token of a page whose last item is last;
// pageArgs reads it back.
func pageToken(last string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(last))
}

// pageArgs validates paging fields: the page size (default 100, at most
// 1000) and the name after which the page starts.
func pageArgs(pageSize int32, token string) (int, string, error) {
	size := int(pageSize)
	switch {
	case size < 0:
		return 0, "", invalid("page_size", "must not be negative, got %d", size)
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	if token == "" {
		return size, "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || checkName("page_token", string(b)) != nil {
		return 0, "", invalid("page_token", "not a token from a previous response")
	}
	return size, string(b), nil
}
