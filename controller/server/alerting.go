package server

import (
	"context"
	"time"

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
	current := map[alerts.Fingerprint]alerts.Alert{}
	var nodes []alerts.NodeInfo
	s.fsm.Read(func(st *pb.State) {
		for _, r := range st.AlertRules {
			rules = append(rules, endpoint.RuleFromPB(r))
		}
		for _, a := range st.Alerts {
			if x, ok := endpoint.AlertFromPB(a); ok {
				current[x.Fingerprint] = x
			}
		}
		for _, n := range st.Nodes {
			status := alerts.NodeUp
			if n.Status == pb.NodeStatus_NODE_STATUS_DOWN {
				status = alerts.NodeDown
			}
			nodes = append(nodes, alerts.NodeInfo{Name: n.Name, Labels: n.Labels, Status: status})
		}
	})
	in := &alerts.StoreInputs{Store: s.hub.Store, NodeList: nodes, From: now.Add(-cfg.Staleness), Latest: s.hub.Store.Latest}
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
		s.logger.Warn("alert "+t.To.String(), "alert", t.Alert.Rule, "node", t.Alert.Node, "value", t.Value,
			"reason", string(t.Reason), "fingerprint", t.Fingerprint.String(), "summary", t.Alert.Annotations["summary"])
	}
	return nil
}
