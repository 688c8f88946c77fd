package alerts

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func mkAlert(rule, node string, sev Severity, firedAt time.Time, extra ...string) Alert {
	ls := map[string]string{LabelAlertName: rule, LabelNode: node, LabelSeverity: string(sev)}
	for i := 0; i+1 < len(extra); i += 2 {
		ls[extra[i]] = extra[i+1]
	}
	return Alert{
		Fingerprint: FingerprintOf(ls), Rule: rule, Node: node, Labels: ls, State: StateFiring,
		ActiveSince: firedAt.Add(-time.Minute), FiredAt: firedAt, UpdatedAt: firedAt, Value: 95,
		Annotations: map[string]string{"summary": rule + " on " + node},
	}
}

func resolve(a Alert, at time.Time) Alert {
	a.State, a.ResolvedAt, a.UpdatedAt = StateResolved, at, at
	return a
}

func alertMap(as ...Alert) map[Fingerprint]Alert {
	m := map[Fingerprint]Alert{}
	for _, a := range as {
		m[a.Fingerprint] = a
	}
	return m
}

func testDispatcher(t *testing.T, route Route) *Dispatcher {
	t.Helper()
	d, err := NewDispatcher(DispatchConfig{
		Route: route,
		Receivers: []Receiver{
			{Name: "default", Kind: ReceiverLog, SendResolved: true},
			{Name: "pager", Kind: ReceiverWebhook, URL: "http://pager.example/hook", SendResolved: true},
			{Name: "db", Kind: ReceiverWebhook, URL: "http://db.example/hook"},
		},
		ExternalURL: "http://controller:8080/",
	})
	require.NoError(t, err)
	return d
}

func receiversOf(p Plan) []string {
	var out []string
	for _, n := range p.Notifications {
		out = append(out, n.Receiver.Name+" "+n.GroupKey)
	}
	return out
}

func TestDispatcher_routing(t *testing.T) {
	d := testDispatcher(t, Route{
		Receiver: "default", GroupBy: []string{"alertname"},
		Routes: []Route{
			{Receiver: "pager", Matchers: []Matcher{{Name: "severity", Value: "critical", IsEqual: true}}, Continue: true},
			{Receiver: "db", Matchers: []Matcher{{Name: "team", Value: "db.*", IsEqual: true, IsRegex: true}}},
		},
	})
	tests := []struct {
		name  string
		alert Alert
		want  []string
	}{
		{"no child matches: root", mkAlert("cpu-high", "n1", SeverityWarning, t0),
			[]string{`default {}:{alertname="cpu-high"}`}},
		{"first match without continue", mkAlert("cpu-high", "n1", SeverityWarning, t0, "team", "dba"),
			[]string{`db {}/{team=~"db.*"}:{alertname="cpu-high"}`}},
		{"continue goes on to the next sibling", mkAlert("disk", "n1", SeverityCritical, t0, "team", "db"),
			[]string{`db {}/{team=~"db.*"}:{alertname="disk"}`, `pager {}/{severity="critical"}:{alertname="disk"}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := d.Plan(t0.Add(time.Hour), alertMap(tt.alert), nil, Ledger{})
			require.Equal(t, tt.want, receiversOf(p))
		})
	}
}

func TestDispatcher_grouping(t *testing.T) {
	a1 := mkAlert("cpu-high", "n1", SeverityWarning, t0)
	a2 := mkAlert("cpu-high", "n2", SeverityWarning, t0.Add(5*time.Second))
	a3 := mkAlert("disk", "n1", SeverityWarning, t0)
	all := alertMap(a1, a2, a3)
	now := t0.Add(time.Minute)

	byName := testDispatcher(t, Route{Receiver: "default", GroupBy: []string{"alertname"}}).Plan(now, all, nil, Ledger{})
	require.Equal(t, []string{`default {}:{alertname="cpu-high"}`, `default {}:{alertname="disk"}`}, receiversOf(byName))
	require.Len(t, byName.Notifications[0].Alerts, 2)
	require.Equal(t, map[string]string{"alertname": "cpu-high"}, byName.Notifications[0].GroupLabels)

	one := testDispatcher(t, Route{Receiver: "default"}).Plan(now, all, nil, Ledger{})
	require.Equal(t, []string{`default {}:{}`}, receiversOf(one))
	require.Len(t, one.Notifications[0].Alerts, 3)

	each := testDispatcher(t, Route{Receiver: "default", GroupBy: []string{"..."}}).Plan(now, all, nil, Ledger{})
	require.Len(t, each.Notifications, 3)
}

// deliver records every notification of p as delivered at at.
func deliver(l *Ledger, p Plan, at time.Time) {
	for _, n := range p.Notifications {
		l.Record(n.Delivery(at))
	}
}

func TestDispatcher_groupWaitIntervalRepeat(t *testing.T) {
	d := testDispatcher(t, Route{Receiver: "default", GroupBy: []string{"alertname"},
		GroupWait: 30 * time.Second, GroupInterval: 5 * time.Minute, RepeatInterval: time.Hour})
	a1 := mkAlert("cpu-high", "n1", SeverityWarning, t0)
	var l Ledger

	p := d.Plan(t0.Add(10*time.Second), alertMap(a1), nil, l)
	require.Empty(t, p.Notifications, "group_wait")
	require.Equal(t, t0.Add(30*time.Second), p.Next)

	p = d.Plan(t0.Add(30*time.Second), alertMap(a1), nil, l)
	require.Len(t, p.Notifications, 1)
	first := p.Notifications[0]
	require.False(t, first.Repeat)
	deliver(&l, p, t0.Add(31*time.Second))
	require.Empty(t, d.Plan(t0.Add(40*time.Second), alertMap(a1), nil, l).Notifications, "delivered once")

	// A new alert joins the notified group: group_interval after the last delivery.
	a2 := mkAlert("cpu-high", "n2", SeverityWarning, t0.Add(time.Minute))
	p = d.Plan(t0.Add(2*time.Minute), alertMap(a1, a2), nil, l)
	require.Empty(t, p.Notifications)
	require.Equal(t, t0.Add(31*time.Second+5*time.Minute), p.Next)
	p = d.Plan(t0.Add(31*time.Second+5*time.Minute), alertMap(a1, a2), nil, l)
	require.Len(t, p.Notifications, 1)
	require.Len(t, p.Notifications[0].Alerts, 2)
	deliver(&l, p, t0.Add(6*time.Minute))

	// Nothing new: repeat_interval after the last delivery, with a new key.
	p = d.Plan(t0.Add(30*time.Minute), alertMap(a1, a2), nil, l)
	require.Empty(t, p.Notifications)
	require.Equal(t, t0.Add(66*time.Minute), p.Next)
	p = d.Plan(t0.Add(66*time.Minute), alertMap(a1, a2), nil, l)
	require.Len(t, p.Notifications, 1)
	require.True(t, p.Notifications[0].Repeat)
	require.NotEqual(t, first.Key, p.Notifications[0].Key)
}

func TestDispatcher_resolvedNotifications(t *testing.T) {
	route := Route{Receiver: "default", GroupBy: []string{"alertname"}, GroupWait: time.Second, GroupInterval: time.Minute,
		Routes: []Route{{Receiver: "db", Matchers: []Matcher{{Name: "team", Value: "db", IsEqual: true}}}}}
	d := testDispatcher(t, route)
	a := mkAlert("cpu-high", "n1", SeverityWarning, t0)
	var l Ledger

	// Resolved before anyone was told: nothing to say.
	require.Empty(t, d.Plan(t0.Add(time.Hour), alertMap(resolve(a, t0.Add(500*time.Millisecond))), nil, l).Notifications)

	p := d.Plan(t0.Add(time.Second), alertMap(a), nil, l)
	require.Len(t, p.Notifications, 1)
	deliver(&l, p, t0.Add(time.Second))

	r := resolve(a, t0.Add(10*time.Second))
	p = d.Plan(t0.Add(20*time.Second), alertMap(r), nil, l)
	require.Empty(t, p.Notifications, "group_interval after the firing notification")
	p = d.Plan(t0.Add(61*time.Second), alertMap(r), nil, l)
	require.Len(t, p.Notifications, 1)
	require.Equal(t, "resolved", p.Notifications[0].Status())
	require.Equal(t, []string{AlertKey(r)}, p.Notifications[0].AlertKeys)
	deliver(&l, p, t0.Add(61*time.Second))
	require.Empty(t, d.Plan(t0.Add(10*time.Hour), alertMap(r), nil, l).Notifications, "resolution announced once, never repeated")

	// A receiver without send_resolved is not told.
	b := mkAlert("cpu-high", "n2", SeverityWarning, t0, "team", "db")
	p = d.Plan(t0.Add(time.Second), alertMap(b), nil, l)
	require.Equal(t, "db", p.Notifications[0].Receiver.Name)
	deliver(&l, p, t0.Add(time.Second))
	require.Empty(t, d.Plan(t0.Add(time.Hour), alertMap(resolve(b, t0.Add(time.Minute))), nil, l).Notifications)
}

func TestDispatcher_silencesSuppressDelivery(t *testing.T) {
	d := testDispatcher(t, Route{Receiver: "default", GroupWait: time.Second})
	a := mkAlert("cpu-high", "web-1", SeverityWarning, t0)
	s := Silence{ID: "s1", Matchers: []Matcher{{Name: "node", Value: "web-.*", IsEqual: true, IsRegex: true}},
		StartsAt: t0, EndsAt: t0.Add(time.Hour)}
	require.Empty(t, d.Plan(t0.Add(time.Minute), alertMap(a), []Silence{s}, Ledger{}).Notifications)
	p := d.Plan(t0.Add(time.Hour), alertMap(a), []Silence{s}, Ledger{})
	require.Len(t, p.Notifications, 1, "the silence ended")
}

// A new leader plans from the replicated ledger: what was recorded is not
// sent again, and what was sent but not yet recorded is sent with the same
// key, so the receiver can drop the duplicate.
func TestDispatcher_failoverDoesNotResend(t *testing.T) {
	d := testDispatcher(t, Route{Receiver: "pager", GroupWait: time.Second})
	a := mkAlert("disk", "n1", SeverityCritical, t0)
	var l Ledger
	p1 := d.Plan(t0.Add(2*time.Second), alertMap(a), nil, l)
	require.Len(t, p1.Notifications, 1)

	d2 := testDispatcher(t, Route{Receiver: "pager", GroupWait: time.Second})
	p2 := d2.Plan(t0.Add(3*time.Second), alertMap(a), nil, l)
	require.Equal(t, p1.Notifications[0].Key, p2.Notifications[0].Key, "same state, same key")

	del := p1.Notifications[0].Delivery(t0.Add(2 * time.Second))
	l.Record(del)
	l.Record(del) // a replayed command
	require.Equal(t, uint64(1), l.Groups["pager "+del.GroupKey].Count)
	require.Empty(t, d2.Plan(t0.Add(4*time.Second), alertMap(a), nil, l).Notifications)

	// The alert fires again after resolving: a new transition, a new key.
	again := mkAlert("disk", "n1", SeverityCritical, t0.Add(time.Hour))
	p3 := d2.Plan(t0.Add(time.Hour+2*time.Second), alertMap(again), nil, l)
	require.Len(t, p3.Notifications, 1)
	require.NotEqual(t, p1.Notifications[0].Key, p3.Notifications[0].Key)
}

func TestLedger_Prune(t *testing.T) {
	d := testDispatcher(t, Route{Receiver: "default", GroupBy: []string{"..."}, GroupWait: time.Second})
	a, b := mkAlert("a", "n1", SeverityInfo, t0), mkAlert("b", "n1", SeverityInfo, t0)
	var l Ledger
	deliver(&l, d.Plan(t0.Add(time.Second), alertMap(a, b), nil, l), t0.Add(time.Second))
	require.Len(t, l.Sent, 2)
	ra := resolve(a, t0.Add(time.Minute))
	l.Prune(alertMap(ra), t0)
	require.Equal(t, map[string]time.Time{"default " + AlertKey(a): t0.Add(time.Second)}, l.Sent, "b is gone; a's firing key gates its resolution")
	require.Len(t, l.Groups, 2)
	l.Prune(nil, t0.Add(time.Hour))
	require.Empty(t, l.Sent)
	require.Empty(t, l.Groups)
}

func TestDispatchConfig_Validate(t *testing.T) {
	good := func() DispatchConfig {
		return DispatchConfig{
			Route:     Route{Receiver: "default", Routes: []Route{{Receiver: "hook", Matchers: []Matcher{{Name: "severity", Value: "critical", IsEqual: true}}}}},
			Receivers: []Receiver{{Name: "default", Kind: ReceiverLog}, {Name: "hook", Kind: ReceiverWebhook, URL: "https://h.example/x"}},
		}
	}
	require.NoError(t, good().Validate())
	tests := []struct {
		name  string
		edit  func(*DispatchConfig)
		field string
	}{
		{"unknown receiver", func(c *DispatchConfig) { c.Route.Routes[0].Receiver = "pager" }, "route.routes[0].receiver"},
		{"root without receiver", func(c *DispatchConfig) { c.Route.Receiver = "" }, "route.receiver"},
		{"bad regex", func(c *DispatchConfig) { c.Route.Routes[0].Matchers[0] = Matcher{Name: "x", Value: "[", IsRegex: true} }, "route.routes[0].matchers[0].value"},
		{"negative repeat", func(c *DispatchConfig) { c.Route.Routes[0].RepeatInterval = -1 }, "route.routes[0].repeat_interval"},
		{"bad group_by", func(c *DispatchConfig) { c.Route.GroupBy = []string{"-x"} }, "route.group_by[0]"},
		{"duplicate receiver", func(c *DispatchConfig) { c.Receivers[1].Name = "default" }, "receivers[1].name"},
		{"webhook without url", func(c *DispatchConfig) { c.Receivers[1].URL = "" }, "receivers[1].url"},
		{"unknown kind", func(c *DispatchConfig) { c.Receivers[1].Kind = "email" }, "receivers[1].kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.edit(&c)
			var fe *FieldError
			require.ErrorAs(t, c.Validate(), &fe)
			require.Equal(t, tt.field, fe.Field)
		})
	}
}
