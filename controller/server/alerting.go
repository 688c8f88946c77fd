package server

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/alerts"
	"github.com/hostscale/hostscale/controller/internal/endpoint"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// evaluateAlerts is the leader loop that evaluates the alerting rules
// every AlertInterval against the nodes' latest samples and writes each
// round's transitions to Raft, then logs them (the log receiver). It first
// installs the default rules on a cluster that never had rules.
func (s *Server) evaluateAlerts(ctx context.Context) error {
	cfg := alerts.DefaultConfig()
	ev, err := alerts.NewEvaluator(cfg)
	if err != nil {
		return err
	}
	initialized := false
	s.fsm.Read(func(st *pb.State) { initialized = st.AlertRulesInitialized })
	if !initialized {
		var rules []*pb.AlertRule
		for _, r := range alerts.DefaultRules() {
			rules = append(rules, endpoint.RuleToPB(r))
		}
		if _, err := s.core.Apply(&pb.Command{Command: &pb.Command_InitAlertRules{InitAlertRules: &pb.InitAlertRulesCommand{Rules: rules}}}); err != nil {
			return err
		}
	}
	t := time.NewTicker(s.cfg.AlertInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := s.evaluateOnce(ev, cfg, time.Now()); err != nil {
			return err
		}
	}
}

func (s *Server) evaluateOnce(ev *alerts.Evaluator, cfg alerts.Config, now time.Time) error {
	var rules []alerts.Rule
	var current map[alerts.Fingerprint]alerts.Alert
	var nodes []alerts.NodeInfo
	var pools []alerts.PoolInfo
	s.fsm.Read(func(st *pb.State) {
		for _, r := range st.AlertRules {
			rules = append(rules, endpoint.RuleFromPB(r))
		}
		current = alertsOf(st)
		for _, n := range st.Nodes {
			status := alerts.NodeUp
			if n.Status == pb.NodeStatus_NODE_STATUS_DOWN {
				status = alerts.NodeDown
			}
			var conds []string
			for _, c := range s.hub.Conditions(n.Name) {
				conds = append(conds, agents.ConditionName(c.Type))
			}
			nodes = append(nodes, alerts.NodeInfo{Name: n.Name, Labels: n.Labels, Status: status, Conditions: conds})
		}
		healthy := map[string]uint32{}
		for _, inst := range st.Instances {
			if inst.State == pb.InstanceState_INSTANCE_STATE_HEALTHY && !inst.Draining && !inst.Stop {
				healthy[inst.Pool]++
			}
		}
		for _, p := range st.Pools {
			pools = append(pools, alerts.PoolInfo{Name: p.Name, Desired: p.Desired, Healthy: healthy[p.Name]})
		}
	})
	in := &alerts.StoreInputs{Store: s.hub.Store, NodeList: nodes, From: now.Add(-cfg.Staleness), Latest: s.hub.Store.Latest,
		PoolList: pools, Traffic: s.lbstats, TrafficFresh: freshFor}
	ts := ev.Evaluate(now, rules, in, current)
	if len(ts) == 0 {
		return nil
	}
	cmd := &pb.AlertTransitionsCommand{}
	for _, t := range ts {
		if t.To == alerts.StateInactive {
			cmd.Ended = append(cmd.Ended, t.Fingerprint.String())
		} else {
			cmd.Alerts = append(cmd.Alerts, endpoint.AlertToPB(t.Alert))
		}
	}
	if _, err := s.core.Apply(&pb.Command{Command: &pb.Command_AlertTransitions{AlertTransitions: cmd}}); err != nil {
		return err
	}
	for _, t := range ts {
		s.logger.Warn("alert "+t.To.String(), "alert", t.Alert.Rule, "node", t.Alert.Node, "pool", t.Alert.Pool, "value", t.Value,
			"reason", string(t.Reason), "fingerprint", t.Fingerprint.String(), "summary", t.Alert.Annotations["summary"])
	}
	return nil
}

// dispatchConfig is the delivery file's routing when one is given;
// otherwise every alert goes to the log and to each configured webhook and
// Alertmanager, grouped by alert name.
func dispatchConfig(c Config) alerts.DispatchConfig {
	if c.AlertDelivery != nil {
		return *c.AlertDelivery
	}
	cfg := alerts.DispatchConfig{
		Receivers: []alerts.Receiver{{Name: "log", Kind: alerts.ReceiverLog, SendResolved: true}},
		Route: alerts.Route{
			Receiver:       "log",
			GroupBy:        []string{alerts.LabelAlertName},
			GroupWait:      c.AlertGroupWait,
			GroupInterval:  c.AlertGroupInterval,
			RepeatInterval: c.AlertRepeatInterval,
			Routes:         []alerts.Route{{Receiver: "log", Continue: true}},
		},
	}
	add := func(r alerts.Receiver) {
		cfg.Receivers = append(cfg.Receivers, r)
		cfg.Route.Routes = append(cfg.Route.Routes, alerts.Route{Receiver: r.Name, Continue: true})
	}
	for i, u := range c.AlertWebhooks {
		add(alerts.Receiver{Name: fmt.Sprintf("webhook-%d", i), Kind: alerts.ReceiverWebhook, URL: u, SendResolved: true})
	}
	if c.AlertmanagerURL != "" {
		add(alerts.Receiver{Name: "alertmanager", Kind: alerts.ReceiverAlertmanager, URL: c.AlertmanagerURL, SendResolved: true})
	}
	return cfg
}

// notifyAlerts is the leader loop that delivers notifications: each round
// it plans from the alerts and the delivery records in Raft, sends what is
// due, and records each delivery through Raft, so that no later leader
// sends it again. A leader that dies between a send and its record leaves
// the notification to be sent again under the same idempotency key.
func (s *Server) notifyAlerts(ctx context.Context) error {
	d, err := alerts.NewDispatcher(dispatchConfig(s.cfg))
	if err != nil {
		return err
	}
	senders := alerts.Senders{Log: alerts.LogSender{Logger: s.logger}, HTTP: &alerts.HTTPSender{Retry: alerts.DefaultRetry()}}
	t := time.NewTicker(s.cfg.AlertInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		var current map[alerts.Fingerprint]alerts.Alert
		var ledger alerts.Ledger
		var silences []alerts.Silence
		s.fsm.Read(func(st *pb.State) {
			for _, x := range st.Silences {
				silences = append(silences, endpoint.SilenceFromPB(x))
			}
			current = alertsOf(st)
			for _, r := range st.AlertDeliveries {
				ledger.Record(alerts.Delivery{Key: r.Key, Receiver: r.Receiver, GroupKey: r.GroupKey, AlertKeys: r.AlertKeys, At: r.At.AsTime()})
			}
		})
		plan := d.Plan(time.Now(), current, silences, ledger)
		for _, n := range plan.Notifications {
			if err := senders.Send(ctx, n); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.logger.Warn("alert notification failed", "receiver", n.Receiver.Name, "key", n.Key, "err", err)
				continue
			}
			dl := n.Delivery(time.Now())
			if _, err := s.core.Apply(&pb.Command{Command: &pb.Command_RecordAlertDeliveries{RecordAlertDeliveries: &pb.RecordAlertDeliveriesCommand{
				Deliveries: []*pb.AlertDelivery{{Key: dl.Key, Receiver: dl.Receiver, GroupKey: dl.GroupKey, AlertKeys: dl.AlertKeys, At: timestamppb.New(dl.At)}},
			}}}); err != nil {
				return err
			}
		}
	}
}

// alertsOf returns the alerts of a state by fingerprint.
func alertsOf(st *pb.State) map[alerts.Fingerprint]alerts.Alert {
	out := make(map[alerts.Fingerprint]alerts.Alert, len(st.Alerts))
	for _, a := range st.Alerts {
		if x, ok := endpoint.AlertFromPB(a); ok {
			out[x.Fingerprint] = x
		}
	}
	return out
}
