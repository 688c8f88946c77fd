package fsm

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func (f *FSM) setMember(c *pb.SetMemberCommand) error {
	m := c.GetMember()
	if m.GetId() == "" {
		return status.Error(codes.InvalidArgument, "member.id: must not be empty")
	}
	f.state.Members[m.GetId()] = proto.Clone(m).(*pb.MemberRecord)
	return nil
}

func (f *FSM) createPool(c *pb.CreatePoolCommand, index uint64) error {
	p := c.GetPool()
	if p.GetName() == "" {
		return status.Error(codes.InvalidArgument, "pool.name: must not be empty")
	}
	if _, ok := f.state.Pools[p.GetName()]; ok {
		return status.Errorf(codes.AlreadyExists, "pool %q already exists", p.GetName())
	}
	if other, route := f.routeTaken(p); other != "" {
		return status.Errorf(codes.FailedPrecondition, "pool.hosts: the route %s is already served by pool %q", route, other)
	}
	p = proto.Clone(p).(*pb.Pool)
	p.CreateIndex, p.ModifyIndex = index, index
	if p.Template != nil {
		p.TemplateIndex = index
	}
	if p.NextInstance == 0 {
		p.NextInstance = 1
	}
	if p.NextScaleEvent == 0 {
		p.NextScaleEvent = 1
	}
	f.state.Pools[p.Name] = p
	return nil
}

func (f *FSM) updatePool(c *pb.UpdatePoolCommand, index uint64) error {
	np := c.GetPool()
	old, err := f.pool(np.GetName())
	if err != nil {
		return err
	}
	if other, route := f.routeTaken(np); other != "" {
		return status.Errorf(codes.FailedPrecondition, "pool.hosts: the route %s is already served by pool %q", route, other)
	}
	p := proto.CloneOf(np)
	p.CreateIndex, p.ModifyIndex = old.CreateIndex, index
	p.NextInstance, p.NextScaleEvent = old.NextInstance, old.NextScaleEvent
	if p.Desired == 0 {
		p.Desired = min(max(old.Desired, p.Min), p.Max)
	}
	switch {
	case p.Template == nil:
		p.TemplateIndex = 0
		for id, in := range f.state.Instances {
			if in.Pool == p.Name {
				f.deleteInstance(id)
			}
		}
	case old.Template == nil || !proto.Equal(old.Template, p.Template):
		p.TemplateIndex = index
	default:
		p.TemplateIndex = old.TemplateIndex
	}
	f.state.Pools[p.Name] = p
	return nil
}

func (f *FSM) deletePool(c *pb.DeletePoolCommand) error {
	if _, ok := f.state.Pools[c.GetPool()]; !ok {
		return status.Errorf(codes.NotFound, "pool %q not found", c.GetPool())
	}
	delete(f.state.Pools, c.GetPool())
	delete(f.state.ScaleEvents, c.GetPool())
	// Its instances are forgotten: no assignment names them any more, so
	// their agents stop them.
	for id, in := range f.state.Instances {
		if in.Pool == c.GetPool() {
			delete(f.state.Instances, id)
		}
	}
	return nil
}

func (f *FSM) pool(name string) (*pb.Pool, error) {
	p, ok := f.state.Pools[name]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "pool %q not found", name)
	}
	return p, nil
}

func (f *FSM) addBackend(c *pb.AddBackendCommand, index uint64) error {
	p, err := f.pool(c.GetPool())
	if err != nil {
		return err
	}
	b := c.GetBackend()
	if b.GetAddress() == "" {
		return status.Error(codes.InvalidArgument, "backend.address: must not be empty")
	}
	if slices.ContainsFunc(p.Backends, func(x *pb.Backend) bool { return strings.EqualFold(x.Address, b.GetAddress()) }) {
		return status.Errorf(codes.AlreadyExists, "pool %q already has backend %q", p.Name, b.GetAddress())
	}
	p.Backends = append(p.Backends, proto.Clone(b).(*pb.Backend))
	p.ModifyIndex = index
	return nil
}

func (f *FSM) removeBackend(c *pb.RemoveBackendCommand, index uint64) error {
	p, err := f.pool(c.GetPool())
	if err != nil {
		return err
	}
	i := slices.IndexFunc(p.Backends, func(x *pb.Backend) bool { return strings.EqualFold(x.Address, c.GetAddress()) })
	if i < 0 {
		return status.Errorf(codes.NotFound, "pool %q has no backend %q", p.Name, c.GetAddress())
	}
	p.Backends = slices.Delete(p.Backends, i, i+1)
	p.ModifyIndex = index
	return nil
}

// routeTaken returns a pool that already serves one of p's routes (host and
// path prefix), and that route.
func (f *FSM) routeTaken(p *pb.Pool) (pool, route string) {
	hosts := p.GetHosts()
	if len(hosts) == 0 {
		hosts = []string{""}
	}
	for _, other := range f.state.Pools {
		if other.GetName() == p.GetName() || other.GetPathPrefix() != p.GetPathPrefix() {
			continue
		}
		oh := other.GetHosts()
		if len(oh) == 0 {
			oh = []string{""}
		}
		for _, h := range hosts {
			if slices.Contains(oh, h) {
				if h == "" {
					h = "(any host)"
				}
				return other.GetName(), fmt.Sprintf("%s %s", h, p.GetPathPrefix())
			}
		}
	}
	return "", ""
}
