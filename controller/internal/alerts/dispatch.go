package alerts

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// AlertKey is the idempotency key of an alert's current notifiable
// transition: fingerprint, state and the transition's time. It equals the
// Key of the Transition that put the alert in that state. Empty for
// pending and inactive alerts, which are never notified.
func AlertKey(a Alert) string {
	var at time.Time
	switch a.State {
	case StateFiring:
		at = a.FiredAt
	case StateResolved:
		at = a.ResolvedAt
	default:
		return ""
	}
	return a.Fingerprint.String() + ":" + a.State.String() + ":" + strconv.FormatInt(at.UnixNano(), 10)
}

// Ledger is the replicated record of what was delivered. The FSM owns it
// and changes it only through Record and Prune, so every controller holds
// the same ledger and a new leader does not resend what the old one
// delivered. The zero Ledger is empty and ready for Record.
type Ledger struct {
	// Sent maps receiver + " " + AlertKey to the delivery time.
	Sent map[string]time.Time
	// Groups maps receiver + " " + group key to the group's last delivery.
	Groups map[string]GroupRecord
}

// GroupRecord is the last delivery to one group of one receiver.
type GroupRecord struct {
	LastSent time.Time
	LastKey  string
	// Count is the number of notifications delivered to the group; it
	// makes repeat notifications' keys distinct.
	Count uint64
}

// Delivery is what the leader writes to Raft once a notification has been
// delivered.
type Delivery struct {
	Key       string
	Receiver  string
	GroupKey  string
	AlertKeys []string
	At        time.Time
}

func sentKey(receiver, alertKey string) string { return receiver + " " + alertKey }

// Record applies a delivery; recording the same delivery (same Key) again
// changes nothing.
func (l *Ledger) Record(d Delivery) {
	if l.Sent == nil {
		l.Sent = map[string]time.Time{}
	}
	if l.Groups == nil {
		l.Groups = map[string]GroupRecord{}
	}
	gk := sentKey(d.Receiver, d.GroupKey)
	g := l.Groups[gk]
	if g.LastKey == d.Key {
		return
	}
	l.Groups[gk] = GroupRecord{LastSent: d.At, LastKey: d.Key, Count: g.Count + 1}
	for _, k := range d.AlertKeys {
		l.Sent[sentKey(d.Receiver, k)] = d.At
	}
}

// Prune forgets sent keys of alerts that are no longer in alerts (or whose
// key changed) and groups last notified before the given time (use now
// minus the longest repeat_interval: by then a repeat is due anyway).
// Deterministic, for the FSM to run on a leader-timestamped command.
func (l *Ledger) Prune(alerts map[Fingerprint]Alert, before time.Time) {
	live := make(map[string]struct{}, len(alerts))
	for _, a := range alerts {
		if k := AlertKey(a); k != "" {
			live[k] = struct{}{}
		}
		if a.State == StateResolved {
			// keep the firing key: it gates the resolved notification
			f := a
			f.State = StateFiring
			live[AlertKey(f)] = struct{}{}
		}
	}
	for k := range l.Sent {
		_, ak, _ := strings.Cut(k, " ")
		if _, ok := live[ak]; !ok {
			delete(l.Sent, k)
		}
	}
	for k, g := range l.Groups {
		if g.LastSent.Before(before) {
			delete(l.Groups, k)
		}
	}
}

// Notification is one message to one receiver about one group.
type Notification struct {
	// Key is the idempotency key: a hash of receiver, group key, the
	// group's delivery count and the AlertKeys. Planning the same state
	// again (say, on a new leader before the Delivery committed) yields
	// the same key; senders put it in the Idempotency-Key header.
	Key         string
	Receiver    Receiver
	GroupKey    string
	GroupLabels map[string]string
	// Alerts are the group's firing alerts, then the resolved ones being
	// announced, each part by fingerprint.
	Alerts []Alert
	// AlertKeys are AlertKey of each alert, in the same order.
	AlertKeys []string
	// Repeat is true for a repeat_interval resend of unchanged alerts.
	Repeat bool
	// At is the planning time; payloads use it, so retries send the same
	// body.
	At          time.Time
	ExternalURL string
}

// Status is "firing" when any alert fires, else "resolved".
func (n Notification) Status() string {
	for _, a := range n.Alerts {
		if a.State == StateFiring {
			return "firing"
		}
	}
	return "resolved"
}

// Delivery is the record to write once n has been delivered at time at.
func (n Notification) Delivery(at time.Time) Delivery {
	return Delivery{Key: n.Key, Receiver: n.Receiver.Name, GroupKey: n.GroupKey, AlertKeys: n.AlertKeys, At: at}
}

// Plan is the outcome of one planning round.
type Plan struct {
	// Notifications are due now, by receiver then group key.
	Notifications []Notification
	// Next is the earliest time a group not due now becomes due (zero when
	// none is waiting); the notifier can sleep until then or the next
	// alert change.
	Next time.Time
}

// Dispatcher plans notifications. It is immutable after NewDispatcher and
// safe for concurrent use; Plan is a pure function of its arguments.
type Dispatcher struct {
	root        *route
	receivers   map[string]Receiver
	externalURL string
}

// NewDispatcher validates cfg and returns a dispatcher.
func NewDispatcher(cfg DispatchConfig) (*Dispatcher, error) {
	root, err := compileConfig(cfg)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{root: root, receivers: map[string]Receiver{}, externalURL: strings.TrimRight(cfg.ExternalURL, "/")}
	for _, r := range cfg.Receivers {
		d.receivers[r.Name] = r
	}
	return d, nil
}

type group struct {
	route    *route
	receiver Receiver
	key      string
	labels   map[string]string
	firing   []Alert
	resolved []Alert
}

// Plan decides which notifications are due at now, given the replicated
// alerts, the silences and the ledger. It reads but never modifies its
// arguments. Per receiver and group:
//   - firing alerts muted by an active silence are left out, and so are
//     their resolutions;
//   - a resolved alert is announced once, only to a receiver with
//     SendResolved that was told it was firing;
//   - a group with alerts the receiver has not been told about is due
//     group_wait after the earliest of them when the receiver knows none of
//     the group's alerts, else group_interval after its last delivery;
//   - a group with nothing new but firing alerts is due repeat_interval
//     after its last delivery.
func (d *Dispatcher) Plan(now time.Time, alerts map[Fingerprint]Alert, silences []Silence, ledger Ledger) Plan {
	var muting [][]compiledMatcher
	for _, s := range silences {
		if !s.Active(now) {
			continue
		}
		if cms, err := compileMatchers(s.Matchers, "silence.matchers"); err == nil {
			muting = append(muting, cms)
		}
	}
	muted := func(ls map[string]string) bool {
		for _, cms := range muting {
			if matchAll(cms, ls) {
				return true
			}
		}
		return false
	}

	groups := map[string]*group{}
	for _, fp := range sortedFingerprints(alerts) {
		a := alerts[fp]
		if a.State != StateFiring && a.State != StateResolved {
			continue
		}
		if muted(a.Labels) {
			continue
		}
		for _, r := range d.root.match(a.Labels) {
			rcv := d.receivers[r.receiver]
			if a.State == StateResolved {
				f := a
				f.State = StateFiring
				_, told := ledger.Sent[sentKey(rcv.Name, AlertKey(f))]
				_, done := ledger.Sent[sentKey(rcv.Name, AlertKey(a))]
				if !rcv.SendResolved || !told || done {
					continue
				}
			}
			gl, gkey := r.group(a.Labels)
			id := sentKey(rcv.Name, gkey)
			g := groups[id]
			if g == nil {
				g = &group{route: r, receiver: rcv, key: gkey, labels: gl}
				groups[id] = g
			}
			if a.State == StateFiring {
				g.firing = append(g.firing, a)
			} else {
				g.resolved = append(g.resolved, a)
			}
		}
	}

	var plan Plan
	ids := make([]string, 0, len(groups))
	for id := range groups {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		g := groups[id]
		rec := ledger.Groups[id]
		var earliestNew time.Time
		fresh, told := false, len(g.resolved) > 0
		for _, a := range g.firing {
			if _, ok := ledger.Sent[sentKey(g.receiver.Name, AlertKey(a))]; ok {
				told = true
			} else if !fresh || a.FiredAt.Before(earliestNew) {
				fresh, earliestNew = true, a.FiredAt
			}
		}
		for _, a := range g.resolved {
			if !fresh || a.ResolvedAt.Before(earliestNew) {
				fresh, earliestNew = true, a.ResolvedAt
			}
		}
		var due time.Time
		switch {
		case fresh && told:
			due = rec.LastSent.Add(g.route.interval)
		case fresh:
			due = earliestNew.Add(g.route.wait)
		case len(g.firing) > 0:
			due = rec.LastSent.Add(g.route.repeat)
		default:
			continue
		}
		if due.After(now) {
			if plan.Next.IsZero() || due.Before(plan.Next) {
				plan.Next = due
			}
			continue
		}
		plan.Notifications = append(plan.Notifications, d.notification(now, g, rec, !fresh))
	}
	return plan
}

func (d *Dispatcher) notification(now time.Time, g *group, rec GroupRecord, repeat bool) Notification {
	n := Notification{Receiver: g.receiver, GroupKey: g.key, GroupLabels: g.labels, Repeat: repeat, At: now, ExternalURL: d.externalURL}
	n.Alerts = append(append(n.Alerts, g.firing...), g.resolved...)
	h := fnvString(fnvString(fnvString(uint64(fnvOffset), g.receiver.Name), g.key), strconv.FormatUint(rec.Count, 10))
	for _, a := range n.Alerts {
		k := AlertKey(a)
		n.AlertKeys = append(n.AlertKeys, k)
		h = fnvString(h, k)
	}
	n.Key = fmt.Sprintf("%016x", h)
	return n
}
