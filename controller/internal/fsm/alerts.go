package fsm

import (
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func (f *FSM) putAlertRule(c *pb.PutAlertRuleCommand, index uint64) error {
	r := c.GetRule()
	if r.GetName() == "" {
		return status.Error(codes.InvalidArgument, "rule.name: must not be empty")
	}
	prev, exists := f.state.AlertRules[r.Name]
	switch {
	case c.Create && exists:
		return status.Errorf(codes.AlreadyExists, "rule %q already exists", r.Name)
	case !c.Create && !exists:
		return status.Errorf(codes.NotFound, "rule %q not found", r.Name)
	}
	r = proto.Clone(r).(*pb.AlertRule)
	r.CreateIndex, r.ModifyIndex = index, index
	if exists {
		r.CreateIndex = prev.CreateIndex
	}
	f.state.AlertRules[r.Name] = r
	f.state.AlertRulesInitialized = true
	return nil
}

func (f *FSM) deleteAlertRule(c *pb.DeleteAlertRuleCommand) error {
	if _, ok := f.state.AlertRules[c.GetRule()]; !ok {
		return status.Errorf(codes.NotFound, "rule %q not found", c.GetRule())
	}
	delete(f.state.AlertRules, c.GetRule())
	return nil
}

func (f *FSM) alertTransitions(c *pb.AlertTransitionsCommand) error {
	for _, fp := range c.GetEnded() {
		delete(f.state.Alerts, fp)
	}
	for _, a := range c.GetAlerts() {
		if a.GetFingerprint() == "" {
			return status.Error(codes.InvalidArgument, "alerts.fingerprint: must not be empty")
		}
		f.state.Alerts[a.Fingerprint] = proto.Clone(a).(*pb.Alert)
	}
	return nil
}

func (f *FSM) initAlertRules(c *pb.InitAlertRulesCommand, index uint64) error {
	if f.state.AlertRulesInitialized {
		return nil
	}
	for _, r := range c.GetRules() {
		r = proto.Clone(r).(*pb.AlertRule)
		r.CreateIndex, r.ModifyIndex = index, index
		f.state.AlertRules[r.Name] = r
	}
	f.state.AlertRulesInitialized = true
	return nil
}

// DeliveryRetention is how long delivery records are kept (by command
// time): longer than any repeat interval.
const DeliveryRetention = 24 * time.Hour

func (f *FSM) recordAlertDeliveries(c *pb.RecordAlertDeliveriesCommand, cmd *pb.Command) error {
	for _, d := range c.GetDeliveries() {
		if d.GetKey() == "" || d.GetAt() == nil {
			return status.Error(codes.InvalidArgument, "deliveries.key and deliveries.at: must be set")
		}
		f.state.AlertDeliveries = append(f.state.AlertDeliveries, proto.Clone(d).(*pb.AlertDelivery))
	}
	horizon := cmd.GetTime().AsTime().Add(-DeliveryRetention)
	drop := 0
	for drop < len(f.state.AlertDeliveries) && f.state.AlertDeliveries[drop].GetAt().AsTime().Before(horizon) {
		drop++
	}
	if drop > 0 {
		f.state.AlertDeliveries = append(f.state.AlertDeliveries[:0:0], f.state.AlertDeliveries[drop:]...)
	}
	return nil
}

func (f *FSM) putSilence(c *pb.PutSilenceCommand) error {
	if c.GetSilence().GetId() == "" {
		return status.Error(codes.InvalidArgument, "silence.id: must not be empty")
	}
	f.state.Silences[c.Silence.Id] = proto.Clone(c.Silence).(*pb.Silence)
	return nil
}

func (f *FSM) deleteSilence(c *pb.DeleteSilenceCommand) error {
	if _, ok := f.state.Silences[c.GetSilence()]; !ok {
		return status.Errorf(codes.NotFound, "silence %q not found", c.GetSilence())
	}
	delete(f.state.Silences, c.GetSilence())
	return nil
}
