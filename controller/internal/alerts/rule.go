package alerts

import (
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/hostscale/hostscale/controller/internal/metricstore"
	"github.com/hostscale/hostscale/internal/labels"
)

// ErrInvalid is matched (errors.Is) by every validation error of this
// package, so the API edge can map them to InvalidArgument.
var ErrInvalid = errors.New("invalid")

// FieldError is a validation error that names the offending field, e.g.
// `rule.for: must not be negative`.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }

// Unwrap returns the cause.
func (e *FieldError) Unwrap() error { return e.Err }

// Is reports whether target is ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Kind says what a rule evaluates.
type Kind string

const (
	// KindThreshold compares a metric's latest value with a threshold. The
	// empty Kind means KindThreshold.
	KindThreshold Kind = "threshold"
	// KindNodeDown is active while the liveness loop holds a node down.
	KindNodeDown Kind = "node_down"
	// KindNodeCondition is active while the node's agent reports the
	// condition named by Metric (any, when empty).
	KindNodeCondition Kind = "node_condition"
	// KindPoolThreshold compares a pool's metric (PoolMetrics) with a
	// threshold: per pool, not per node.
	KindPoolThreshold Kind = "pool_threshold"
)

// PoolMetrics are the metrics a KindPoolThreshold rule may compare. The
// first six are the balancers' traffic over the rule's Window, summed over
// balancers and backends: requests and errors (5xx answers and transport
// failures) per second, errors per request, latency quantiles in ms, and
// the mean of the requests in flight. The last two count instances:
// healthy ones, and those the pool lacks (desired minus healthy, not below
// zero).
var PoolMetrics = []string{"request_rate", "error_rate", "error_ratio", "p95_latency_ms", "p99_latency_ms", "in_flight",
	"healthy_instances", "missing_instances"}

// A pool rule's Window: DefaultPoolWindow when 0, else between
// MinPoolWindow and MaxPoolWindow (the traffic kept on the leader).
const (
	DefaultPoolWindow = time.Minute
	MinPoolWindow     = 10 * time.Second
	MaxPoolWindow     = 10 * time.Minute
)

// Conditions are the names a KindNodeCondition rule's Metric may take.
var Conditions = []string{"disk_pressure", "memory_pressure", "disk_stalled"}

// Op is a comparison operator.
type Op string

// The comparison operators.
const (
	OpGT Op = ">"
	OpGE Op = ">="
	OpLT Op = "<"
	OpLE Op = "<="
	OpEQ Op = "=="
	OpNE Op = "!="
)

// Valid reports whether o is one of the six operators.
func (o Op) Valid() bool {
	switch o {
	case OpGT, OpGE, OpLT, OpLE, OpEQ, OpNE:
		return true
	}
	return false
}

// Holds reports whether `v o threshold` is true. An invalid operator never
// holds.
func (o Op) Holds(v, threshold float64) bool {
	switch o {
	case OpGT:
		return v > threshold
	case OpGE:
		return v >= threshold
	case OpLT:
		return v < threshold
	case OpLE:
		return v <= threshold
	case OpEQ:
		return v == threshold
	case OpNE:
		return v != threshold
	}
	return false
}

// Severity is a rule's severity, carried as the alert label "severity".
type Severity string

// The severities.
const (
	SeverityCritical Severity = "critical"
	SeverityWarning  Severity = "warning"
	SeverityInfo     Severity = "info"
)

// Reserved alert label keys; rule labels may not set them.
const (
	LabelAlertName = "alertname"
	LabelNode      = "node"
	LabelPool      = "pool"
	LabelSeverity  = "severity"
)

// Rule is an alerting rule: for each node chosen by Selector, an alert is
// pending while `Metric Op Threshold` holds and fires once it has held for
// For. A rule is a value; treat its maps as read-only once it is in use.
type Rule struct {
	// Name is a DNS label (RFC 1123) and the alert's "alertname" label.
	Name string
	// Kind is KindThreshold (or empty), KindNodeDown, KindNodeCondition
	// or KindPoolThreshold.
	Kind Kind
	// Metric is a series name of metricstore.SeriesNames for a threshold
	// rule, a name of Conditions (or empty) for a condition rule, a name of
	// PoolMetrics for a pool rule.
	Metric    string
	Op        Op
	Threshold float64
	// For is how long the condition must hold before the alert fires; 0
	// fires on the first evaluation that sees it.
	For time.Duration
	// Selector chooses nodes by label (labels.Parse grammar); empty means
	// every node. A pool rule's chooses pools by the label "pool", their
	// name.
	Selector string
	// Window is what a pool rule's traffic metrics are rates over (0:
	// DefaultPoolWindow); only for a pool rule.
	Window time.Duration
	// Labels are added to the alert's labels. They are not templated:
	// labels make the fingerprint, which must not change with the value.
	Labels map[string]string
	// Annotations are text/template strings over AnnotationData, rendered
	// at each transition.
	Annotations map[string]string
	Severity    Severity
}

// AnnotationData is what annotation templates see.
type AnnotationData struct {
	Labels map[string]string
	Value  float64
	Node   string
	Pool   string
	Rule   string
}

// Expr returns the rule's condition as text, e.g. "cpu_percent > 90",
// "node_down", "node_condition disk_pressure", "node_condition" or
// "pool error_ratio > 0.05".
func (r Rule) Expr() string {
	switch r.Kind {
	case KindNodeDown:
		return string(KindNodeDown)
	case KindNodeCondition:
		return strings.TrimSpace(string(KindNodeCondition) + " " + r.Metric)
	case KindPoolThreshold:
		return "pool " + Expr{Metric: r.Metric, Op: r.Op, Threshold: r.Threshold}.String()
	}
	return Expr{Metric: r.Metric, Op: r.Op, Threshold: r.Threshold}.String()
}

// WithExpr returns r with Metric, Op and Threshold set from e.
func (r Rule) WithExpr(e Expr) Rule {
	r.Kind, r.Metric, r.Op, r.Threshold = KindThreshold, e.Metric, e.Op, e.Threshold
	return r
}

var dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Validate checks the rule; the error is a *FieldError naming the first bad
// field in declaration order (rule.name, rule.kind, rule.metric, rule.op,
// rule.threshold, rule.for, rule.window, rule.selector, rule.labels,
// rule.annotations.<key>, rule.severity).
func (r Rule) Validate() error {
	if len(r.Name) > 63 || !dnsLabelRE.MatchString(r.Name) {
		return fieldErr("rule.name", "%q is not a DNS label (lower-case alphanumerics and '-', at most 63)", r.Name)
	}
	switch r.Kind {
	case "", KindThreshold:
		if _, ok := metricstore.SeriesIndex(r.Metric); !ok {
			return fieldErr("rule.metric", "unknown series %q", r.Metric)
		}
		if !r.Op.Valid() {
			return fieldErr("rule.op", "unknown operator %q (want one of > >= < <= == !=)", r.Op)
		}
		if math.IsNaN(r.Threshold) || math.IsInf(r.Threshold, 0) {
			return fieldErr("rule.threshold", "must be finite, got %v", r.Threshold)
		}
	case KindNodeDown:
		if r.Metric != "" || r.Op != "" {
			return fieldErr("rule.metric", "must be empty for a %s rule", KindNodeDown)
		}
	case KindNodeCondition:
		if r.Metric != "" && !slices.Contains(Conditions, r.Metric) {
			return fieldErr("rule.metric", "unknown condition %q (want one of %s, or empty for any)", r.Metric, strings.Join(Conditions, ", "))
		}
		if r.Op != "" {
			return fieldErr("rule.op", "must be empty for a %s rule", KindNodeCondition)
		}
	case KindPoolThreshold:
		if !slices.Contains(PoolMetrics, r.Metric) {
			return fieldErr("rule.metric", "unknown pool metric %q (want one of %s)", r.Metric, strings.Join(PoolMetrics, ", "))
		}
		if !r.Op.Valid() {
			return fieldErr("rule.op", "unknown operator %q (want one of > >= < <= == !=)", r.Op)
		}
		if math.IsNaN(r.Threshold) || math.IsInf(r.Threshold, 0) {
			return fieldErr("rule.threshold", "must be finite, got %v", r.Threshold)
		}
	default:
		return fieldErr("rule.kind", "unknown kind %q (want %s, %s, %s or %s)", r.Kind, KindThreshold, KindNodeDown, KindNodeCondition, KindPoolThreshold)
	}
	if r.For < 0 {
		return fieldErr("rule.for", "must not be negative, got %s", r.For)
	}
	switch {
	case r.Window != 0 && r.Kind != KindPoolThreshold:
		return fieldErr("rule.window", "only a %s rule has a window", KindPoolThreshold)
	case r.Window != 0 && (r.Window < MinPoolWindow || r.Window > MaxPoolWindow):
		return fieldErr("rule.window", "must be between %s and %s, got %s", MinPoolWindow, MaxPoolWindow, r.Window)
	}
	if _, err := labels.Parse(r.Selector); err != nil {
		return &FieldError{Field: "rule.selector", Err: err}
	}
	if err := labels.Check(r.Labels); err != nil {
		return &FieldError{Field: "rule.labels", Err: err}
	}
	for _, k := range []string{LabelAlertName, LabelNode, LabelPool, LabelSeverity} {
		if _, ok := r.Labels[k]; ok {
			return fieldErr("rule.labels", "key %q is reserved", k)
		}
	}
	for _, k := range sortedKeys(r.Annotations) {
		if err := labels.CheckKey(k); err != nil {
			return &FieldError{Field: "rule.annotations", Err: err}
		}
		if err := CheckTemplate(k, r.Annotations[k]); err != nil {
			return &FieldError{Field: "rule.annotations." + k, Err: err}
		}
	}
	switch r.Severity {
	case SeverityCritical, SeverityWarning, SeverityInfo:
	default:
		return fieldErr("rule.severity", "unknown severity %q (want critical, warning or info)", r.Severity)
	}
	return nil
}

// ValidateRules validates each rule and that names are unique; errors name
// the rule's index, e.g. `rules[2].for: must not be negative`.
func ValidateRules(rules []Rule) error {
	seen := make(map[string]int, len(rules))
	for i, r := range rules {
		if err := r.Validate(); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				return &FieldError{Field: fmt.Sprintf("rules[%d]", i) + strings.TrimPrefix(fe.Field, "rule"), Err: fe.Err}
			}
			return err
		}
		if j, dup := seen[r.Name]; dup {
			return fieldErr(fmt.Sprintf("rules[%d].name", i), "%q duplicates rules[%d]", r.Name, j)
		}
		seen[r.Name] = i
	}
	return nil
}

// CheckTemplate parses an annotation template and executes it once against
// sample data, so that both syntax errors and references to fields that do
// not exist are reported. The error starts with "template: <name>:".
func CheckTemplate(name, text string) error {
	t, err := parseTemplate(name, text)
	if err != nil {
		return err
	}
	return t.Execute(io.Discard, AnnotationData{
		Labels: map[string]string{LabelAlertName: "rule", LabelNode: "node", LabelPool: "pool", LabelSeverity: "warning"},
		Value:  1, Node: "node", Pool: "pool", Rule: "rule",
	})
}

func parseTemplate(name, text string) (*template.Template, error) {
	return template.New(name).Option("missingkey=zero").Parse(text)
}

// Expr is a parsed threshold condition.
type Expr struct {
	Metric    string
	Op        Op
	Threshold float64
}

// String formats e so that ParseExpr(e.String()) returns e.
func (e Expr) String() string {
	return e.Metric + " " + string(e.Op) + " " + strconv.FormatFloat(e.Threshold, 'g', -1, 64)
}

// ParseExpr parses "<metric> <op> <number>", e.g. "cpu_percent > 90";
// spaces are optional around the operator. The metric must be a
// lower-case identifier ([a-z_][a-z0-9_]*) but is not checked against the
// known series (Validate does that); the number must be finite.
func ParseExpr(s string) (Expr, error) {
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
	}
	skip()
	start := i
	for i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] == '_' || i > start && s[i] >= '0' && s[i] <= '9') {
		i++
	}
	metric := s[start:i]
	if metric == "" {
		return Expr{}, fmt.Errorf("expr %q: want a metric name at offset %d", s, start)
	}
	skip()
	start = i
	for i < len(s) && strings.IndexByte("<>=!", s[i]) >= 0 {
		i++
	}
	op := Op(s[start:i])
	if !op.Valid() {
		return Expr{}, fmt.Errorf("expr %q: unknown operator %q at offset %d (want one of > >= < <= == !=)", s, op, start)
	}
	skip()
	start = i
	for i < len(s) && s[i] != ' ' && s[i] != '\t' {
		i++
	}
	num := s[start:i]
	skip()
	if i != len(s) {
		return Expr{}, fmt.Errorf("expr %q: unexpected %q at offset %d", s, s[i:], i)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || strings.ContainsAny(num, "_xXpPnNiI") {
		return Expr{}, fmt.Errorf("expr %q: want a finite decimal number at offset %d, got %q", s, start, num)
	}
	return Expr{Metric: metric, Op: op, Threshold: v}, nil
}

// DefaultRules are the rules installed at bootstrap: CPU above 90 %, memory
// above 80 % and disk above 90 % for a minute, node down, a stalled disk,
// and for every pool more than 5 % of failed requests over 5 minutes, or
// fewer healthy instances than desired for 15 (Kubernetes'
// replicas-mismatch alert). The disk rule
// watches disk_used_percent, which the metric store keeps as the fullest
// mount of a node; per-mount alerts need per-mount series and are a later
// extension. Node down has no `for`: the liveness loop has already waited
// out the heartbeat TTL before it marks a node down.
func DefaultRules() []Rule {
	return []Rule{
		{
			Name: "host-cpu-high", Metric: "cpu_percent", Op: OpGT, Threshold: 90, For: time.Minute,
			Severity: SeverityWarning,
			Annotations: map[string]string{
				"summary":     "CPU above 90% on {{ .Node }}",
				"description": `CPU on {{ .Node }} is {{ printf "%.1f" .Value }}%, above 90% for 1m.`,
			},
		},
		{
			Name: "host-memory-high", Metric: "memory_used_percent", Op: OpGT, Threshold: 80, For: time.Minute,
			Severity: SeverityWarning,
			Annotations: map[string]string{
				"summary":     "Memory above 80% on {{ .Node }}",
				"description": `Memory on {{ .Node }} is {{ printf "%.1f" .Value }}% used, above 80% for 1m.`,
			},
		},
		{
			Name: "host-disk-high", Metric: "disk_used_percent", Op: OpGT, Threshold: 90, For: time.Minute,
			Severity: SeverityCritical,
			Annotations: map[string]string{
				"summary":     "Disk above 90% on {{ .Node }}",
				"description": `The fullest disk of {{ .Node }} is {{ printf "%.1f" .Value }}% used, above 90% for 1m.`,
			},
		},
		{
			Name: "node-down", Kind: KindNodeDown, Severity: SeverityCritical,
			Annotations: map[string]string{
				"summary":     "Node {{ .Node }} is down",
				"description": "Node {{ .Node }} missed its heartbeats and is marked down.",
			},
		},
		{
			Name: "node-disk-stalled", Kind: KindNodeCondition, Metric: "disk_stalled", For: time.Minute,
			Severity: SeverityCritical,
			Annotations: map[string]string{
				"summary":     "The disk of {{ .Node }} is stalled",
				"description": "A write to the data directory of {{ .Node }}'s agent has not returned for over a minute; no instance is placed on it.",
			},
		},
		{
			Name: "pool-errors", Kind: KindPoolThreshold, Metric: "error_ratio", Op: OpGT, Threshold: 0.05,
			Window: 5 * time.Minute, For: 5 * time.Minute, Severity: SeverityWarning,
			Annotations: map[string]string{
				"summary":     "Pool {{ .Pool }} fails over 5% of its requests",
				"description": `{{ printf "%.3f" .Value }} of the requests to {{ .Pool }} failed (5xx answers and transport failures) over 5m, for 5m.`,
			},
		},
		{
			Name: "pool-instances-missing", Kind: KindPoolThreshold, Metric: "missing_instances", Op: OpGT, Threshold: 0,
			For: 15 * time.Minute, Severity: SeverityWarning,
			Annotations: map[string]string{
				"summary":     "Pool {{ .Pool }} lacks healthy instances",
				"description": `{{ .Pool }} has had {{ printf "%.0f" .Value }} fewer healthy instances than it wants for 15m: they cannot be placed, do not start or fail their health checks.`,
			},
		},
	}
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
