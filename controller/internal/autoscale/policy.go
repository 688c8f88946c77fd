package autoscale

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// The defaults Defaults gives the unset fields of a policy (the HPA's,
// except the scale-down rate: the HPA allows removing every pod per 15s, we
// remove one instance per minute, since an instance here is a process on a
// shared host, not a pod a cluster can reschedule cheaply).
const (
	DefaultTolerance              = 0.1
	DefaultScaleUpStabilization   = 0 * time.Second
	DefaultScaleDownStabilization = 300 * time.Second
	DefaultEvaluationPeriod       = 5 * time.Second
	DefaultWindow                 = 10 * time.Second
	DefaultInitializationPeriod   = 15 * time.Second
	// DefaultActivationTimeout is how long balancers hold a request for a
	// pool scaled to zero (Knative's activator waits as long by default).
	DefaultActivationTimeout = 30 * time.Second
)

// DefaultScaleUpLimits are the scale-up limits of a policy that sets none:
// the larger of doubling and four more instances per 15s.
func DefaultScaleUpLimits() []*pb.RateLimit {
	return []*pb.RateLimit{
		{Kind: pb.RateLimitKind_RATE_LIMIT_KIND_PERCENT, Value: 100, Period: durationpb.New(15 * time.Second)},
		{Kind: pb.RateLimitKind_RATE_LIMIT_KIND_INSTANCES, Value: 4, Period: durationpb.New(15 * time.Second)},
	}
}

// DefaultScaleDownLimits are the scale-down limits of a policy that sets
// none: one instance per minute.
func DefaultScaleDownLimits() []*pb.RateLimit {
	return []*pb.RateLimit{
		{Kind: pb.RateLimitKind_RATE_LIMIT_KIND_INSTANCES, Value: 1, Period: durationpb.New(60 * time.Second)},
	}
}

// Bounds Validate enforces.
const (
	MaxStabilization        = time.Hour
	MinEvaluationPeriod     = time.Second
	MaxEvaluationPeriod     = 10 * time.Minute
	MinWindow               = time.Second
	MaxWindow               = time.Hour
	MaxInitializationPeriod = time.Hour
	MinScaleToZeroAfter     = time.Second
	MaxScaleToZeroAfter     = 24 * time.Hour
	MinActivationTimeout    = time.Second
	MaxActivationTimeout    = 5 * time.Minute
	// MaxMetrics bounds a policy's further metrics.
	MaxMetrics        = 3
	MinLimitPeriod    = time.Second
	MaxLimitPeriod    = 30 * time.Minute
	MaxLimitPercent   = 1000
	MaxLimits         = 10 // per direction
	MaxExecTimeout    = 10 * time.Minute
	MaxWebhookTimeout = time.Minute
	maxProviderString = 4096
	maxExecArgs       = 256
	maxWebhookSecret  = 1024
)

// Defaults returns a copy of p with every unset field given its default:
// tolerance 0.1; stabilization 0s up and 300s down; scale-up limits +100 %
// and +4 instances per 15s, scale-down limits 1 instance per 60s; selects
// MAX; evaluation period 5s; window 10s; initialization period 15s; with
// scale_to_zero_after, an activation timeout of 30s. A
// duration is unset when nil (an explicit 0s stabilization means none), a
// limit list when empty. The provider is left as it is: its timeouts are
// the provider package's. Defaults(nil) is nil; p is not modified, and
// Defaults(Defaults(p)) equals Defaults(p).
func Defaults(p *pb.ScalingPolicy) *pb.ScalingPolicy {
	if p == nil {
		return nil
	}
	d := proto.CloneOf(p)
	if d.Tolerance == nil {
		d.Tolerance = proto.Float64(DefaultTolerance)
	}
	setDuration(&d.ScaleUpStabilization, DefaultScaleUpStabilization)
	setDuration(&d.ScaleDownStabilization, DefaultScaleDownStabilization)
	setDuration(&d.EvaluationPeriod, DefaultEvaluationPeriod)
	setDuration(&d.Window, DefaultWindow)
	setDuration(&d.InitializationPeriod, DefaultInitializationPeriod)
	if d.ScaleToZeroAfter != nil {
		setDuration(&d.ActivationTimeout, DefaultActivationTimeout)
	}
	if len(d.ScaleUpLimits) == 0 {
		d.ScaleUpLimits = DefaultScaleUpLimits()
	}
	if len(d.ScaleDownLimits) == 0 {
		d.ScaleDownLimits = DefaultScaleDownLimits()
	}
	if d.ScaleUpSelect == pb.SelectPolicy_SELECT_POLICY_UNSPECIFIED {
		d.ScaleUpSelect = pb.SelectPolicy_SELECT_POLICY_MAX
	}
	if d.ScaleDownSelect == pb.SelectPolicy_SELECT_POLICY_UNSPECIFIED {
		d.ScaleDownSelect = pb.SelectPolicy_SELECT_POLICY_MAX
	}
	return d
}

// ActivationTimeout is how long balancers hold a request for a pool of
// policy p while it has no instance: p's activation_timeout or its
// default when p scales to zero, else 0 (no hold).
func ActivationTimeout(p *pb.ScalingPolicy) time.Duration {
	switch {
	case p.GetScaleToZeroAfter() == nil:
		return 0
	case p.GetActivationTimeout() == nil:
		return DefaultActivationTimeout
	}
	return p.GetActivationTimeout().AsDuration()
}

func setDuration(d **durationpb.Duration, def time.Duration) {
	if *d == nil {
		*d = durationpb.New(def)
	}
}

// ErrInvalid is what every error of Validate matches with errors.Is.
var ErrInvalid = errors.New("invalid scaling policy")

// FieldError is a validation error naming the offending field by its path,
// e.g. "pool.scaling.scale_up_limits[1].period"; the endpoint maps it to
// INVALID_ARGUMENT with a field violation.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Is reports whether target is ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// join appends a field name to a path; an empty prefix gives the name.
func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// Validate checks a policy as a client sent it (before Defaults) and
// returns the first problem as a *FieldError whose Field is the path under
// prefix: Validate("pool.scaling", p) may say "pool.scaling.target: must
// be > 0". A nil policy (no autoscaling) is valid.
func Validate(prefix string, p *pb.ScalingPolicy) error {
	if p == nil {
		return nil
	}
	f := func(name string) string { return join(prefix, name) }
	if err := checkMetric(prefix, p.Metric, p.Target); err != nil {
		return err
	}
	if len(p.Metrics) > MaxMetrics {
		return fieldErr(f("metrics"), "at most %d further metrics, got %d", MaxMetrics, len(p.Metrics))
	}
	seen := map[pb.ScalingMetric]bool{p.Metric: true}
	for i, m := range p.Metrics {
		mf := fmt.Sprintf("%s[%d]", f("metrics"), i)
		if m == nil {
			return fieldErr(mf, "must be set")
		}
		if err := checkMetric(mf, m.Metric, m.Target); err != nil {
			return err
		}
		if seen[m.Metric] {
			return fieldErr(mf+".metric", "%v is already a metric of the policy", m.Metric)
		}
		seen[m.Metric] = true
	}
	if p.Tolerance != nil {
		if t := *p.Tolerance; math.IsNaN(t) || t < 0 || t >= 1 {
			return fieldErr(f("tolerance"), "must be at least 0 and below 1, got %v", t)
		}
	}
	durations := []struct {
		name   string
		d      *durationpb.Duration
		lo, hi time.Duration
	}{
		{"scale_up_stabilization", p.ScaleUpStabilization, 0, MaxStabilization},
		{"scale_down_stabilization", p.ScaleDownStabilization, 0, MaxStabilization},
		{"evaluation_period", p.EvaluationPeriod, MinEvaluationPeriod, MaxEvaluationPeriod},
		{"window", p.Window, MinWindow, MaxWindow},
		{"initialization_period", p.InitializationPeriod, 0, MaxInitializationPeriod},
		{"scale_to_zero_after", p.ScaleToZeroAfter, MinScaleToZeroAfter, MaxScaleToZeroAfter},
		{"activation_timeout", p.ActivationTimeout, MinActivationTimeout, MaxActivationTimeout},
	}
	for _, d := range durations {
		if d.d == nil {
			continue
		}
		if err := checkDuration(f(d.name), d.d, d.lo, d.hi); err != nil {
			return err
		}
	}
	if p.ActivationTimeout != nil && p.ScaleToZeroAfter == nil {
		return fieldErr(f("activation_timeout"), "only a pool that scales to zero is activated: set scale_to_zero_after")
	}
	if err := checkLimits(f("scale_up_limits"), p.ScaleUpLimits); err != nil {
		return err
	}
	if err := checkLimits(f("scale_down_limits"), p.ScaleDownLimits); err != nil {
		return err
	}
	if _, ok := pb.SelectPolicy_name[int32(p.ScaleUpSelect)]; !ok {
		return fieldErr(f("scale_up_select"), "unknown select policy %d", p.ScaleUpSelect)
	}
	if _, ok := pb.SelectPolicy_name[int32(p.ScaleDownSelect)]; !ok {
		return fieldErr(f("scale_down_select"), "unknown select policy %d", p.ScaleDownSelect)
	}
	if p.Provider != nil {
		return checkProvider(f("provider"), p.Provider)
	}
	return nil
}

// checkMetric checks a metric and its target under prefix.
func checkMetric(prefix string, m pb.ScalingMetric, target float64) error {
	switch _, known := pb.ScalingMetric_name[int32(m)]; {
	case m == pb.ScalingMetric_SCALING_METRIC_UNSPECIFIED:
		return fieldErr(join(prefix, "metric"), "must be set")
	case !known:
		return fieldErr(join(prefix, "metric"), "unknown metric %d", m)
	}
	switch {
	case math.IsNaN(target) || target <= 0:
		return fieldErr(join(prefix, "target"), "must be > 0")
	case math.IsInf(target, 0):
		return fieldErr(join(prefix, "target"), "must be finite")
	}
	return nil
}

// checkDuration checks a set duration: valid, not negative, within lo..hi.
func checkDuration(field string, d *durationpb.Duration, lo, hi time.Duration) error {
	if err := d.CheckValid(); err != nil {
		return fieldErr(field, "not a valid duration: %v", err)
	}
	v := d.AsDuration()
	switch {
	case v < 0:
		return fieldErr(field, "must not be negative, got %v", v)
	case v < lo || v > hi:
		if lo == 0 {
			return fieldErr(field, "at most %v, got %v", hi, v)
		}
		return fieldErr(field, "must be %v to %v, got %v", lo, hi, v)
	}
	return nil
}

func checkLimits(field string, ls []*pb.RateLimit) error {
	if len(ls) > MaxLimits {
		return fieldErr(field, "at most %d limits, got %d", MaxLimits, len(ls))
	}
	for i, l := range ls {
		lf := fmt.Sprintf("%s[%d]", field, i)
		if l == nil {
			return fieldErr(lf, "must be set")
		}
		switch _, known := pb.RateLimitKind_name[int32(l.Kind)]; {
		case l.Kind == pb.RateLimitKind_RATE_LIMIT_KIND_UNSPECIFIED:
			return fieldErr(lf+".kind", "must be set")
		case !known:
			return fieldErr(lf+".kind", "unknown kind %d", l.Kind)
		}
		switch {
		case l.Value < 1:
			return fieldErr(lf+".value", "must be at least 1")
		case l.Kind == pb.RateLimitKind_RATE_LIMIT_KIND_PERCENT && l.Value > MaxLimitPercent:
			return fieldErr(lf+".value", "at most %d percent, got %d", MaxLimitPercent, l.Value)
		}
		if l.Period == nil {
			return fieldErr(lf+".period", "must be set")
		}
		if err := checkDuration(lf+".period", l.Period, MinLimitPeriod, MaxLimitPeriod); err != nil {
			return err
		}
	}
	return nil
}

func checkProvider(field string, p *pb.ScaleProvider) error {
	switch x := p.Provider.(type) {
	case *pb.ScaleProvider_Exec:
		return checkExec(field+".exec", x.Exec)
	case *pb.ScaleProvider_Webhook:
		return checkWebhook(field+".webhook", x.Webhook)
	}
	return fieldErr(field, "must set exec or webhook")
}

func checkExec(field string, x *pb.ExecProvider) error {
	if x == nil {
		return fieldErr(field, "must be set")
	}
	cmd := x.Command
	switch {
	case strings.TrimSpace(cmd) == "":
		return fieldErr(field+".command", "must not be empty")
	case len(cmd) > maxProviderString:
		return fieldErr(field+".command", "at most %d bytes, got %d", maxProviderString, len(cmd))
	case strings.ContainsRune(cmd, 0):
		return fieldErr(field+".command", "must not contain NUL")
	case !strings.HasPrefix(cmd, "/") && strings.Contains(cmd, "/"):
		// A relative path would depend on the controller's working
		// directory: an absolute path, or a name looked up in its PATH.
		return fieldErr(field+".command", "%q must be an absolute path or a program name", cmd)
	}
	if len(x.Args) > maxExecArgs {
		return fieldErr(field+".args", "at most %d arguments, got %d", maxExecArgs, len(x.Args))
	}
	for i, a := range x.Args {
		switch {
		case len(a) > maxProviderString:
			return fieldErr(fmt.Sprintf("%s.args[%d]", field, i), "at most %d bytes, got %d", maxProviderString, len(a))
		case strings.ContainsRune(a, 0):
			return fieldErr(fmt.Sprintf("%s.args[%d]", field, i), "must not contain NUL")
		}
	}
	if x.Timeout != nil {
		return checkDuration(field+".timeout", x.Timeout, 0, MaxExecTimeout)
	}
	return nil
}

func checkWebhook(field string, w *pb.WebhookProvider) error {
	if w == nil {
		return fieldErr(field, "must be set")
	}
	if w.Url == "" {
		return fieldErr(field+".url", "must not be empty")
	}
	if len(w.Url) > maxProviderString {
		return fieldErr(field+".url", "at most %d bytes, got %d", maxProviderString, len(w.Url))
	}
	u, err := url.Parse(w.Url)
	switch {
	case err != nil:
		return fieldErr(field+".url", "%v", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fieldErr(field+".url", "%q must be an http or https URL", w.Url)
	case u.Host == "" || u.Hostname() == "":
		return fieldErr(field+".url", "%q has no host", w.Url)
	}
	if len(w.Secret) > maxWebhookSecret {
		return fieldErr(field+".secret", "at most %d bytes, got %d", maxWebhookSecret, len(w.Secret))
	}
	if w.Timeout != nil {
		return checkDuration(field+".timeout", w.Timeout, 0, MaxWebhookTimeout)
	}
	return nil
}
