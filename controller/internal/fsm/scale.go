package fsm

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Retention of scale events: each pool keeps those younger than
// ScaleEventTTL (by command time), at most MaxScaleEvents. The autoscaler's
// windows and rate periods are bounded below the TTL.
const (
	ScaleEventTTL  = 3600 // seconds
	MaxScaleEvents = 1000
)

func (f *FSM) recordScaleEvent(c *pb.RecordScaleEventCommand, cmd *pb.Command, index uint64) error {
	ev := c.GetEvent()
	p, err := f.pool(ev.GetPool())
	if err != nil {
		return err
	}
	ev = proto.CloneOf(ev)
	if p.NextScaleEvent == 0 {
		p.NextScaleEvent = 1
	}
	ev.Id = fmt.Sprintf("%s-%d", p.Name, p.NextScaleEvent)
	p.NextScaleEvent++
	ev.Time = cmd.GetTime()
	if ev.Acted {
		switch {
		case ev.PreviousDesired != p.Desired:
			// Decided against a count that changed since (a ScalePool in
			// between): recorded, not applied.
			ev.Acted = false
			ev.Reason += fmt.Sprintf(" (not applied: desired changed to %d meanwhile)", p.Desired)
		case ev.Desired < p.Min || ev.Desired > p.Max:
			return status.Errorf(codes.InvalidArgument, "event.desired: %d is outside the pool's min %d and max %d", ev.Desired, p.Min, p.Max)
		default:
			p.Desired = ev.Desired
		}
	}
	p.ModifyIndex = index
	list := f.state.ScaleEvents[p.Name]
	if list == nil {
		list = &pb.ScaleEvents{}
		f.state.ScaleEvents[p.Name] = list
	}
	list.Events = append(list.Events, ev)
	now := cmd.GetTime().GetSeconds()
	drop := 0
	for drop < len(list.Events) && (len(list.Events)-drop > MaxScaleEvents || now-list.Events[drop].GetTime().GetSeconds() > ScaleEventTTL) {
		drop++
	}
	if drop > 0 {
		list.Events = append(list.Events[:0:0], list.Events[drop:]...)
	}
	return nil
}

func (f *FSM) recordProviderResult(c *pb.RecordProviderResultCommand) error {
	list := f.state.ScaleEvents[c.GetPool()]
	for _, ev := range list.GetEvents() {
		if ev.Id == c.GetEvent() {
			ev.Provider = proto.CloneOf(c.GetResult())
			return nil
		}
	}
	return status.Errorf(codes.NotFound, "pool %q has no scale event %q", c.GetPool(), c.GetEvent())
}
