package endpoint

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/alerts"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Alerts serves hostscale.v1.AlertService.
type Alerts struct {
	pb.UnimplementedAlertServiceServer
	Core *Core
}

var _ pb.AlertServiceServer = (*Alerts)(nil)

var kinds = map[pb.AlertRuleKind]alerts.Kind{
	pb.AlertRuleKind_ALERT_RULE_KIND_UNSPECIFIED:    alerts.KindThreshold,
	pb.AlertRuleKind_ALERT_RULE_KIND_THRESHOLD:      alerts.KindThreshold,
	pb.AlertRuleKind_ALERT_RULE_KIND_NODE_DOWN:      alerts.KindNodeDown,
	pb.AlertRuleKind_ALERT_RULE_KIND_NODE_CONDITION: alerts.KindNodeCondition,
	pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD: alerts.KindPoolThreshold,
}

var severities = map[pb.Severity]alerts.Severity{
	pb.Severity_SEVERITY_UNSPECIFIED: alerts.SeverityWarning, // the default
	pb.Severity_SEVERITY_CRITICAL:    alerts.SeverityCritical,
	pb.Severity_SEVERITY_WARNING:     alerts.SeverityWarning,
	pb.Severity_SEVERITY_INFO:        alerts.SeverityInfo,
}

var states = map[alerts.State]pb.AlertState{
	alerts.StatePending:  pb.AlertState_ALERT_STATE_PENDING,
	alerts.StateFiring:   pb.AlertState_ALERT_STATE_FIRING,
	alerts.StateResolved: pb.AlertState_ALERT_STATE_RESOLVED,
}

// RuleFromPB converts a stored or requested rule.
func RuleFromPB(r *pb.AlertRule) alerts.Rule {
	return alerts.Rule{
		Name:        r.GetName(),
		Kind:        kinds[r.GetKind()],
		Metric:      r.GetMetric(),
		Op:          alerts.Op(r.GetOp()),
		Threshold:   r.GetThreshold(),
		For:         r.GetFor().AsDuration(),
		Window:      r.GetWindow().AsDuration(),
		Selector:    r.GetSelector(),
		Labels:      maps.Clone(r.GetLabels()),
		Annotations: maps.Clone(r.GetAnnotations()),
		Severity:    severities[r.GetSeverity()],
	}
}

// RuleToPB converts a rule for storage.
func RuleToPB(r alerts.Rule) *pb.AlertRule {
	out := &pb.AlertRule{
		Name: r.Name, Metric: r.Metric, Op: string(r.Op), Threshold: r.Threshold, For: durationpb.New(r.For),
		Selector: r.Selector, Labels: maps.Clone(r.Labels), Annotations: maps.Clone(r.Annotations),
		Kind: pb.AlertRuleKind_ALERT_RULE_KIND_THRESHOLD,
	}
	switch r.Kind {
	case alerts.KindNodeDown:
		out.Kind = pb.AlertRuleKind_ALERT_RULE_KIND_NODE_DOWN
	case alerts.KindNodeCondition:
		out.Kind = pb.AlertRuleKind_ALERT_RULE_KIND_NODE_CONDITION
	case alerts.KindPoolThreshold:
		out.Kind = pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD
	}
	if r.Window != 0 {
		out.Window = durationpb.New(r.Window)
	}
	for k, v := range severities {
		if v == r.Severity && k != pb.Severity_SEVERITY_UNSPECIFIED {
			out.Severity = k
		}
	}
	return out
}

// AlertToPB converts an alert for storage.
func AlertToPB(a alerts.Alert) *pb.Alert {
	ts := func(t interface{ IsZero() bool }) bool { return !t.IsZero() }
	out := &pb.Alert{
		Fingerprint: a.Fingerprint.String(), Rule: a.Rule, Node: a.Node, Pool: a.Pool,
		Labels: maps.Clone(a.Labels), Annotations: maps.Clone(a.Annotations),
		State: states[a.State], Value: a.Value,
	}
	if ts(a.ActiveSince) {
		out.ActiveSince = timestamppb.New(a.ActiveSince)
	}
	if ts(a.FiredAt) {
		out.FiredAt = timestamppb.New(a.FiredAt)
	}
	if ts(a.ResolvedAt) {
		out.ResolvedAt = timestamppb.New(a.ResolvedAt)
	}
	if ts(a.UpdatedAt) {
		out.UpdatedAt = timestamppb.New(a.UpdatedAt)
	}
	return out
}

// AlertFromPB converts a stored alert; false when its fingerprint is not
// one this version writes.
func AlertFromPB(a *pb.Alert) (alerts.Alert, bool) {
	fp, err := strconv.ParseUint(a.GetFingerprint(), 16, 64)
	if err != nil {
		return alerts.Alert{}, false
	}
	out := alerts.Alert{
		Fingerprint: alerts.Fingerprint(fp), Rule: a.GetRule(), Node: a.GetNode(), Pool: a.GetPool(),
		Labels: maps.Clone(a.GetLabels()), Annotations: maps.Clone(a.GetAnnotations()), Value: a.GetValue(),
	}
	for k, v := range states {
		if v == a.GetState() {
			out.State = k
		}
	}
	if a.ActiveSince != nil {
		out.ActiveSince = a.ActiveSince.AsTime()
	}
	if a.FiredAt != nil {
		out.FiredAt = a.FiredAt.AsTime()
	}
	if a.ResolvedAt != nil {
		out.ResolvedAt = a.ResolvedAt.AsTime()
	}
	if a.UpdatedAt != nil {
		out.UpdatedAt = a.UpdatedAt.AsTime()
	}
	return out, true
}

// checkRule validates a requested rule; the error names the field.
func checkRule(r *pb.AlertRule) error {
	if r == nil {
		return invalid("rule", "must be set")
	}
	if _, ok := kinds[r.Kind]; !ok {
		return invalid("rule.kind", "unknown kind %d", r.Kind)
	}
	if _, ok := severities[r.Severity]; !ok {
		return invalid("rule.severity", "unknown severity %d", r.Severity)
	}
	if r.For != nil && r.For.CheckValid() != nil {
		return invalid("rule.for", "not a valid duration")
	}
	if r.Window != nil && r.Window.CheckValid() != nil {
		return invalid("rule.window", "not a valid duration")
	}
	if err := checkName("rule.name", r.Name); err != nil {
		return err
	}
	if err := RuleFromPB(r).Validate(); err != nil {
		var fe *alerts.FieldError
		if errors.As(err, &fe) {
			return invalid(fe.Field, "%v", fe.Err)
		}
		return invalid("rule", "%v", err)
	}
	return nil
}

// putRule validates and writes a created or replaced rule; id is the
// request's (already filled in) request id.
func (s *Alerts) putRule(ctx context.Context, id string, rule *pb.AlertRule, create bool, req, resp proto.Message) (*pb.AlertRule, uint64, bool, error) {
	if err := checkRule(rule); err != nil {
		return nil, 0, false, err
	}
	rule.CreateIndex, rule.ModifyIndex = 0, 0
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_PutAlertRule{PutAlertRule: &pb.PutAlertRuleCommand{Rule: rule, Create: create}},
	})
	if fwd || err != nil {
		return nil, 0, fwd, err
	}
	var out *pb.AlertRule
	s.Core.FSM.Read(func(st *pb.State) {
		if r := st.AlertRules[rule.Name]; r != nil {
			out = proto.Clone(r).(*pb.AlertRule)
		}
	})
	return out, res.Index, false, nil
}

func (s *Alerts) CreateRule(ctx context.Context, req *pb.CreateRuleRequest) (*pb.CreateRuleResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	resp := &pb.CreateRuleResponse{}
	r, idx, fwd, err := s.putRule(ctx, req.RequestId, req.Rule, true, req, resp)
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Rule, resp.Index = r, idx
	return resp, nil
}

func (s *Alerts) UpdateRule(ctx context.Context, req *pb.UpdateRuleRequest) (*pb.UpdateRuleResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	resp := &pb.UpdateRuleResponse{}
	r, idx, fwd, err := s.putRule(ctx, req.RequestId, req.Rule, false, req, resp)
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Rule, resp.Index = r, idx
	return resp, nil
}

func (s *Alerts) DeleteRule(ctx context.Context, req *pb.DeleteRuleRequest) (*pb.DeleteRuleResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("rule", req.Rule); err != nil {
		return nil, err
	}
	resp := &pb.DeleteRuleResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_DeleteAlertRule{DeleteAlertRule: &pb.DeleteAlertRuleCommand{Rule: req.Rule}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = res.Index
	return resp, nil
}

func (s *Alerts) ListRules(ctx context.Context, req *pb.ListRulesRequest) (*pb.ListRulesResponse, error) {
	resp := &pb.ListRulesResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		for _, n := range slices.Sorted(maps.Keys(st.AlertRules)) {
			resp.Rules = append(resp.Rules, proto.Clone(st.AlertRules[n]).(*pb.AlertRule))
		}
	})
	return resp, nil
}

func (s *Alerts) ListAlerts(ctx context.Context, req *pb.ListAlertsRequest) (*pb.ListAlertsResponse, error) {
	if _, ok := pb.AlertState_name[int32(req.State)]; !ok {
		return nil, invalid("state", "unknown state %d", req.State)
	}
	resp := &pb.ListAlertsResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		for _, fp := range slices.Sorted(maps.Keys(st.Alerts)) {
			a := st.Alerts[fp]
			if req.State == pb.AlertState_ALERT_STATE_UNSPECIFIED || a.State == req.State {
				resp.Alerts = append(resp.Alerts, proto.Clone(a).(*pb.Alert))
			}
		}
	})
	return resp, nil
}
