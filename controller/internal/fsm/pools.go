package fsm

import (
	"fmt"
	"maps"
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
	rec := f.state.Members[m.GetId()]
	if rec == nil {
		rec = &pb.MemberRecord{Id: m.GetId()}
		f.state.Members[m.GetId()] = rec
	}
	if m.GetApiAddress() != "" {
		rec.ApiAddress = m.GetApiAddress()
	}
	if c.VoterPending != nil {
		rec.VoterPending = c.GetVoterPending()
	}
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
	f.indexRoutes(p)
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
	f.unindexRoutes(old)
	f.state.Pools[p.Name] = p
	f.indexRoutes(p)
	return nil
}

func (f *FSM) deletePool(c *pb.DeletePoolCommand) error {
	old, ok := f.state.Pools[c.GetPool()]
	if !ok {
		return status.Errorf(codes.NotFound, "pool %q not found", c.GetPool())
	}
	f.unindexRoutes(old)
	delete(f.state.Pools, c.GetPool())
	delete(f.state.ScaleEvents, c.GetPool())
	// Its instances are forgotten: no assignment names them any more, so
	// their agents stop them.
	for id, in := range f.state.Instances {
		if in.Pool == c.GetPool() {
			f.deleteInstance(id)
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

// route is one (host, path prefix) a pool serves; host "" is any host.
type route struct{ host, path string }

// routesOf lists p's routes.
func routesOf(p *pb.Pool) []route {
	if len(p.GetHosts()) == 0 {
		return []route{{"", p.GetPathPrefix()}}
	}
	rs := make([]route, len(p.GetHosts()))
	for i, h := range p.GetHosts() {
		rs[i] = route{h, p.GetPathPrefix()}
	}
	return rs
}

// indexRoutes records p as the pool serving its routes; unindexRoutes
// forgets the routes p serves.
func (f *FSM) indexRoutes(p *pb.Pool) {
	for _, r := range routesOf(p) {
		f.routes[r] = p.GetName()
	}
}

func (f *FSM) unindexRoutes(p *pb.Pool) {
	for _, r := range routesOf(p) {
		if f.routes[r] == p.GetName() {
			delete(f.routes, r)
		}
	}
}

// reindexRoutes rebuilds the route index from the state's pools, in name
// order, so a state that holds a route twice indexes the same pool on
// every replica.
func (f *FSM) reindexRoutes() {
	f.routes = make(map[route]string, len(f.state.Pools))
	for _, name := range slices.Sorted(maps.Keys(f.state.Pools)) {
		for _, r := range routesOf(f.state.Pools[name]) {
			if _, taken := f.routes[r]; !taken {
				f.routes[r] = name
			}
		}
	}
}

// routeTaken returns a pool other than p that already serves one of p's
// routes (host and path prefix), and that route.
func (f *FSM) routeTaken(p *pb.Pool) (pool, where string) {
	for _, r := range routesOf(p) {
		if other, ok := f.routes[r]; ok && other != p.GetName() {
			h := r.host
			if h == "" {
				h = "(any host)"
			}
			return other, fmt.Sprintf("%s %s", h, r.path)
		}
	}
	return "", ""
}
