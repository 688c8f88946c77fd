package fsm

import (
	"maps"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func (f *FSM) registerNode(c *pb.RegisterNodeCommand, cmd *pb.Command, index uint64) error {
	if c.GetNode() == "" {
		return status.Error(codes.InvalidArgument, "node: must not be empty")
	}
	n := f.state.Nodes[c.Node]
	if n == nil {
		n = &pb.Node{Name: c.Node, Registered: cmd.GetTime(), CreateIndex: index}
		f.state.Nodes[c.Node] = n
	}
	n.Facts = proto.Clone(c.GetFacts()).(*pb.NodeFacts)
	n.Labels = maps.Clone(c.GetLabels())
	if n.Status != pb.NodeStatus_NODE_STATUS_UP && n.Status != pb.NodeStatus_NODE_STATUS_DRAINING {
		n.Status, n.StatusTime = upStatus(n), cmd.GetTime()
	}
	n.ModifyIndex = index
	return nil
}

func (f *FSM) setNodeStatus(c *pb.SetNodeStatusCommand, cmd *pb.Command, index uint64) error {
	n := f.state.Nodes[c.GetNode()]
	if n == nil {
		return status.Errorf(codes.NotFound, "node %q not found", c.GetNode())
	}
	if c.Status == pb.NodeStatus_NODE_STATUS_UNSPECIFIED {
		return status.Error(codes.InvalidArgument, "status: must be set")
	}
	st := c.Status
	if st == pb.NodeStatus_NODE_STATUS_UP {
		st = upStatus(n)
	}
	if n.Status != st {
		n.Status, n.StatusTime, n.ModifyIndex = st, cmd.GetTime(), index
	}
	return nil
}

// upStatus is the status of a live node: DRAINING while a drain is on.
func upStatus(n *pb.Node) pb.NodeStatus {
	if n.Drain {
		return pb.NodeStatus_NODE_STATUS_DRAINING
	}
	return pb.NodeStatus_NODE_STATUS_UP
}
