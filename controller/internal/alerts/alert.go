package alerts

import (
	"fmt"
	"maps"
	"sort"
	"strconv"
	"time"
)

// State is an alert's state.
type State uint8

// The states. Inactive alerts are not stored: a transition to
// StateInactive removes the alert.
const (
	StateInactive State = iota
	StatePending
	StateFiring
	StateResolved
)

var stateNames = [...]string{"inactive", "pending", "firing", "resolved"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "state(" + strconv.Itoa(int(s)) + ")"
}

// Fingerprint identifies an alert: a 64-bit FNV-1a hash of its sorted
// labels (alertname, node or pool, severity and the rule's labels). It is stable
// across processes and releases; changing it breaks every stored alert.
type Fingerprint uint64

// String is the fingerprint as 16 lower-case hex digits, as Alertmanager
// prints it.
func (f Fingerprint) String() string { return fmt.Sprintf("%016x", uint64(f)) }

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
	labelSep  = 0xff // never in valid UTF-8, so pairs cannot run together
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	h ^= labelSep
	h *= fnvPrime
	return h
}

// FingerprintOf returns the fingerprint of a label set.
func FingerprintOf(ls map[string]string) Fingerprint {
	h := uint64(fnvOffset)
	for _, k := range sortedKeys(ls) {
		h = fnvString(fnvString(h, k), ls[k])
	}
	return Fingerprint(h)
}

// Reason says why a transition happened.
type Reason string

// The reasons.
const (
	ReasonConditionMet     Reason = "condition_met"     // → pending, or → firing with for 0
	ReasonForElapsed       Reason = "for_elapsed"       // pending → firing
	ReasonConditionCleared Reason = "condition_cleared" // pending → inactive, firing → resolved
	ReasonFlapped          Reason = "flapped"           // pending → inactive: a sample inside for broke the condition
	ReasonNodeGone         Reason = "node_gone"         // the node left the inputs or the selector
	ReasonPoolGone         Reason = "pool_gone"         // the pool left the inputs or the selector
	ReasonRuleRemoved      Reason = "rule_removed"      // the rule was deleted or its labels changed
	ReasonRetentionExpired Reason = "retention_expired" // resolved → inactive
)

// Alert is the state of one (rule, node) pair, or (rule, pool) for a pool
// rule. The zero Alert is inactive. Treat an Alert as immutable: its maps
// are shared between copies.
type Alert struct {
	Fingerprint Fingerprint
	Rule        string
	// Node is set for a node rule's alert, Pool for a pool rule's.
	Node string
	Pool string
	// Labels are alertname, node (or pool), severity and the rule's labels.
	Labels map[string]string
	// Annotations are rendered at the last transition.
	Annotations map[string]string
	State       State
	// ActiveSince is when the condition started to hold (entering pending,
	// or firing directly).
	ActiveSince time.Time
	FiredAt     time.Time
	ResolvedAt  time.Time
	// Value is the value at the last transition (1 or 0 for node down).
	Value float64
	// UpdatedAt is the time of the last transition.
	UpdatedAt time.Time
}

// Transition is one state change of one alert, with the value that caused
// it. It is what the leader writes to Raft: Alert is the complete alert
// after the change, so applying it needs nothing else.
type Transition struct {
	Fingerprint Fingerprint
	From, To    State
	At          time.Time
	// Value caused the transition; 0 when there was none (node gone, rule
	// removed, retention).
	Value  float64
	Reason Reason
	// Alert is the alert after the transition; ignored when To is
	// StateInactive.
	Alert Alert
}

// Key is the transition's idempotency key: fingerprint, target state and
// time, e.g. "8f3a...:firing:1700000000000000000".
func (t Transition) Key() string {
	return t.Fingerprint.String() + ":" + t.To.String() + ":" + strconv.FormatInt(t.At.UnixNano(), 10)
}

// Apply applies transitions to an alert map in order: the deterministic
// step the FSM runs for each committed transition. A transition to
// StateInactive deletes the alert. A transition whose From does not match
// the stored state is applied anyway (the leader computed it from the
// state it saw); Apply never fails.
func Apply(current map[Fingerprint]Alert, ts ...Transition) {
	for _, t := range ts {
		if t.To == StateInactive {
			delete(current, t.Fingerprint)
			continue
		}
		current[t.Fingerprint] = t.Alert
	}
}

// Clone returns a copy of an alert map, sharing the alerts' immutable
// maps.
func Clone(current map[Fingerprint]Alert) map[Fingerprint]Alert { return maps.Clone(current) }

func sortedFingerprints(m map[Fingerprint]Alert) []Fingerprint {
	fs := make([]Fingerprint, 0, len(m))
	for f := range m {
		fs = append(fs, f)
	}
	sort.Slice(fs, func(i, j int) bool { return fs[i] < fs[j] })
	return fs
}
