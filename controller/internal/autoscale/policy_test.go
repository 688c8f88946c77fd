package autoscale

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestDefaults_fillsEveryUnsetField(t *testing.T) {
	in := &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 60}
	d := Defaults(in)
	require.Equal(t, 0.1, d.GetTolerance())
	require.Equal(t, time.Duration(0), d.ScaleUpStabilization.AsDuration())
	require.Equal(t, 300*time.Second, d.ScaleDownStabilization.AsDuration())
	require.True(t, proto.Equal(&pb.ScalingPolicy{ScaleUpLimits: []*pb.RateLimit{
		limit(percent, 100, 15*time.Second), limit(instances, 4, 15*time.Second),
	}}, &pb.ScalingPolicy{ScaleUpLimits: d.ScaleUpLimits}))
	require.True(t, proto.Equal(&pb.ScalingPolicy{ScaleDownLimits: []*pb.RateLimit{limit(instances, 1, time.Minute)}},
		&pb.ScalingPolicy{ScaleDownLimits: d.ScaleDownLimits}))
	require.Equal(t, pb.SelectPolicy_SELECT_POLICY_MAX, d.ScaleUpSelect)
	require.Equal(t, pb.SelectPolicy_SELECT_POLICY_MAX, d.ScaleDownSelect)
	require.Equal(t, 5*time.Second, d.EvaluationPeriod.AsDuration())
	require.Equal(t, 10*time.Second, d.Window.AsDuration())
	require.Equal(t, 15*time.Second, d.InitializationPeriod.AsDuration())
	require.Nil(t, d.ScaleToZeroAfter, "scaling to zero is chosen, never a default")
	require.Nil(t, d.ActivationTimeout, "no activation without scaling to zero")
	require.Equal(t, pb.ScalingMetric_SCALING_METRIC_HOST_CPU, d.Metric)
	require.Equal(t, 60.0, d.Target)

	require.True(t, proto.Equal(&pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 60}, in), "input modified")
	require.True(t, proto.Equal(d, Defaults(d)), "not idempotent")
	require.Nil(t, Defaults(nil))

	z := Defaults(&pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 60, ScaleToZeroAfter: durationpb.New(time.Minute)})
	require.Equal(t, time.Minute, z.ScaleToZeroAfter.AsDuration())
	require.Equal(t, 30*time.Second, z.ActivationTimeout.AsDuration(), "a pool that scales to zero is activated within 30s by default")
	require.Equal(t, 30*time.Second, ActivationTimeout(&pb.ScalingPolicy{ScaleToZeroAfter: durationpb.New(time.Minute)}))
	require.Equal(t, 5*time.Second, ActivationTimeout(&pb.ScalingPolicy{ScaleToZeroAfter: durationpb.New(time.Minute), ActivationTimeout: durationpb.New(5 * time.Second)}))
	require.Zero(t, ActivationTimeout(in), "no hold for a pool that keeps an instance")
	require.Zero(t, ActivationTimeout(nil))
}

func TestDefaults_keepsSetFields(t *testing.T) {
	in := &pb.ScalingPolicy{
		Metric: pb.ScalingMetric_SCALING_METRIC_INSTANCE_CPU, Target: 50,
		Tolerance:              proto.Float64(0),
		ScaleUpStabilization:   durationpb.New(time.Minute),
		ScaleDownStabilization: durationpb.New(0),
		ScaleUpLimits:          []*pb.RateLimit{limit(instances, 2, time.Minute)},
		ScaleDownLimits:        []*pb.RateLimit{limit(percent, 50, time.Minute)},
		ScaleUpSelect:          pb.SelectPolicy_SELECT_POLICY_MIN,
		ScaleDownSelect:        pb.SelectPolicy_SELECT_POLICY_DISABLED,
		EvaluationPeriod:       durationpb.New(time.Second),
		Window:                 durationpb.New(3 * time.Second),
		InitializationPeriod:   durationpb.New(0),
		ScaleToZeroAfter:       durationpb.New(time.Hour),
		ActivationTimeout:      durationpb.New(time.Second),
		Provider:               &pb.ScaleProvider{Provider: &pb.ScaleProvider_Exec{Exec: &pb.ExecProvider{Command: "scale"}}},
	}
	require.True(t, proto.Equal(in, Defaults(in)))
}

// good is a policy with every field set and valid.
func good() *pb.ScalingPolicy {
	return &pb.ScalingPolicy{
		Metric: pb.ScalingMetric_SCALING_METRIC_REQUESTS_PER_INSTANCE, Target: 20,
		Tolerance:              proto.Float64(0.2),
		ScaleUpStabilization:   durationpb.New(0),
		ScaleDownStabilization: durationpb.New(time.Hour),
		ScaleUpLimits:          []*pb.RateLimit{limit(percent, 1000, time.Second), limit(instances, 1, 30*time.Minute)},
		ScaleDownLimits:        []*pb.RateLimit{limit(instances, 1, time.Minute)},
		ScaleUpSelect:          pb.SelectPolicy_SELECT_POLICY_MIN,
		ScaleDownSelect:        pb.SelectPolicy_SELECT_POLICY_DISABLED,
		EvaluationPeriod:       durationpb.New(10 * time.Minute),
		Window:                 durationpb.New(time.Second),
		InitializationPeriod:   durationpb.New(time.Hour),
		ScaleToZeroAfter:       durationpb.New(24 * time.Hour),
		ActivationTimeout:      durationpb.New(5 * time.Minute),
		Provider: &pb.ScaleProvider{Provider: &pb.ScaleProvider_Exec{Exec: &pb.ExecProvider{
			Command: "/usr/local/bin/add-hosts", Args: []string{"--pool", "web"}, Timeout: durationpb.New(10 * time.Minute),
		}}},
	}
}

func webhook(edit func(*pb.WebhookProvider)) func(*pb.ScalingPolicy) {
	return func(p *pb.ScalingPolicy) {
		w := &pb.WebhookProvider{Url: "https://cloud.example.com/scale", Secret: "s3cret", Timeout: durationpb.New(time.Minute)}
		edit(w)
		p.Provider = &pb.ScaleProvider{Provider: &pb.ScaleProvider_Webhook{Webhook: w}}
	}
}

func exec(edit func(*pb.ExecProvider)) func(*pb.ScalingPolicy) {
	return func(p *pb.ScalingPolicy) { edit(p.Provider.GetExec()) }
}

func TestValidate_acceptsGoodPolicies(t *testing.T) {
	require.NoError(t, Validate("pool.scaling", nil))
	require.NoError(t, Validate("pool.scaling", &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 70}))
	require.NoError(t, Validate("pool.scaling", good()))
	p := good()
	webhook(func(*pb.WebhookProvider) {})(p)
	require.NoError(t, Validate("pool.scaling", p))
	p = good()
	exec(func(x *pb.ExecProvider) { x.Command = "add-hosts"; x.Timeout = nil })(p)
	require.NoError(t, Validate("pool.scaling", p))
	require.NoError(t, Validate("pool.scaling", Defaults(good())), "defaults are valid")
	p = good()
	p.Metrics = []*pb.MetricTarget{{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 70}, {Metric: pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS, Target: 250}}
	require.NoError(t, Validate("pool.scaling", p), "further metrics")
	require.NoError(t, Validate("pool.scaling", Defaults(&pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 70})))
}

func TestValidate_namesBadField(t *testing.T) {
	d := durationpb.New
	tests := []struct {
		name  string
		edit  func(*pb.ScalingPolicy)
		field string
		msg   string
	}{
		{"metric unset", func(p *pb.ScalingPolicy) { p.Metric = 0 }, "pool.scaling.metric", "must be set"},
		{"further metric unset", func(p *pb.ScalingPolicy) { p.Metrics = []*pb.MetricTarget{{Target: 1}} }, "pool.scaling.metrics[0].metric", "must be set"},
		{"further metric nil", func(p *pb.ScalingPolicy) { p.Metrics = []*pb.MetricTarget{nil} }, "pool.scaling.metrics[0]", "must be set"},
		{"further target zero", func(p *pb.ScalingPolicy) {
			p.Metrics = []*pb.MetricTarget{{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 70}, {Metric: pb.ScalingMetric_SCALING_METRIC_P95_LATENCY_MS}}
		}, "pool.scaling.metrics[1].target", "must be > 0"},
		{"further metric repeats the policy's", func(p *pb.ScalingPolicy) {
			p.Metrics = []*pb.MetricTarget{{Metric: p.Metric, Target: 5}}
		}, "pool.scaling.metrics[0].metric", "already a metric of the policy"},
		{"too many further metrics", func(p *pb.ScalingPolicy) {
			for range MaxMetrics + 1 {
				p.Metrics = append(p.Metrics, &pb.MetricTarget{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU, Target: 1})
			}
		}, "pool.scaling.metrics", "at most 3 further metrics"},
		{"metric unknown", func(p *pb.ScalingPolicy) { p.Metric = 99 }, "pool.scaling.metric", "unknown metric 99"},
		{"target zero", func(p *pb.ScalingPolicy) { p.Target = 0 }, "pool.scaling.target", "must be > 0"},
		{"target negative", func(p *pb.ScalingPolicy) { p.Target = -1 }, "pool.scaling.target", "must be > 0"},
		{"target NaN", func(p *pb.ScalingPolicy) { p.Target = math.NaN() }, "pool.scaling.target", "must be > 0"},
		{"target infinite", func(p *pb.ScalingPolicy) { p.Target = math.Inf(1) }, "pool.scaling.target", "must be finite"},
		{"tolerance negative", func(p *pb.ScalingPolicy) { p.Tolerance = proto.Float64(-0.1) }, "pool.scaling.tolerance", "below 1"},
		{"tolerance 1", func(p *pb.ScalingPolicy) { p.Tolerance = proto.Float64(1) }, "pool.scaling.tolerance", "below 1"},
		{"tolerance NaN", func(p *pb.ScalingPolicy) { p.Tolerance = proto.Float64(math.NaN()) }, "pool.scaling.tolerance", "below 1"},
		{"invalid duration", func(p *pb.ScalingPolicy) { p.ScaleUpStabilization = &durationpb.Duration{Seconds: 1, Nanos: -1} },
			"pool.scaling.scale_up_stabilization", "not a valid duration"},
		{"negative stabilization", func(p *pb.ScalingPolicy) { p.ScaleUpStabilization = d(-time.Second) },
			"pool.scaling.scale_up_stabilization", "must not be negative"},
		{"stabilization over 1h", func(p *pb.ScalingPolicy) { p.ScaleDownStabilization = d(time.Hour + time.Second) },
			"pool.scaling.scale_down_stabilization", "at most 1h0m0s"},
		{"evaluation period under 1s", func(p *pb.ScalingPolicy) { p.EvaluationPeriod = d(500 * time.Millisecond) },
			"pool.scaling.evaluation_period", "must be 1s to 10m0s"},
		{"evaluation period set to 0", func(p *pb.ScalingPolicy) { p.EvaluationPeriod = d(0) },
			"pool.scaling.evaluation_period", "must be 1s to 10m0s"},
		{"evaluation period over 10m", func(p *pb.ScalingPolicy) { p.EvaluationPeriod = d(11 * time.Minute) },
			"pool.scaling.evaluation_period", "must be 1s to 10m0s"},
		{"window under 1s", func(p *pb.ScalingPolicy) { p.Window = d(0) }, "pool.scaling.window", "must be 1s to 1h0m0s"},
		{"window over 1h", func(p *pb.ScalingPolicy) { p.Window = d(2 * time.Hour) }, "pool.scaling.window", "must be 1s to 1h0m0s"},
		{"initialization period over 1h", func(p *pb.ScalingPolicy) { p.InitializationPeriod = d(61 * time.Minute) },
			"pool.scaling.initialization_period", "at most 1h0m0s"},
		{"initialization period negative", func(p *pb.ScalingPolicy) { p.InitializationPeriod = d(-time.Second) },
			"pool.scaling.initialization_period", "must not be negative"},
		{"scale to zero after under 1s", func(p *pb.ScalingPolicy) { p.ScaleToZeroAfter = d(500 * time.Millisecond) },
			"pool.scaling.scale_to_zero_after", "must be 1s to 24h0m0s"},
		{"scale to zero after over 24h", func(p *pb.ScalingPolicy) { p.ScaleToZeroAfter = d(25 * time.Hour) },
			"pool.scaling.scale_to_zero_after", "must be 1s to 24h0m0s"},
		{"scale to zero after invalid", func(p *pb.ScalingPolicy) { p.ScaleToZeroAfter = &durationpb.Duration{Seconds: 1, Nanos: -1} },
			"pool.scaling.scale_to_zero_after", "not a valid duration"},
		{"activation timeout over 5m", func(p *pb.ScalingPolicy) { p.ActivationTimeout = d(6 * time.Minute) },
			"pool.scaling.activation_timeout", "must be 1s to 5m0s"},
		{"activation timeout 0", func(p *pb.ScalingPolicy) { p.ActivationTimeout = d(0) },
			"pool.scaling.activation_timeout", "must be 1s to 5m0s"},
		{"activation timeout without scale to zero", func(p *pb.ScalingPolicy) { p.ScaleToZeroAfter = nil },
			"pool.scaling.activation_timeout", "set scale_to_zero_after"},
		{"limit nil", func(p *pb.ScalingPolicy) { p.ScaleUpLimits[1] = nil }, "pool.scaling.scale_up_limits[1]", "must be set"},
		{"limit kind unset", func(p *pb.ScalingPolicy) { p.ScaleUpLimits[0].Kind = 0 }, "pool.scaling.scale_up_limits[0].kind", "must be set"},
		{"limit kind unknown", func(p *pb.ScalingPolicy) { p.ScaleDownLimits[0].Kind = 7 }, "pool.scaling.scale_down_limits[0].kind", "unknown kind 7"},
		{"limit value 0", func(p *pb.ScalingPolicy) { p.ScaleDownLimits[0].Value = 0 }, "pool.scaling.scale_down_limits[0].value", "at least 1"},
		{"percent over 1000", func(p *pb.ScalingPolicy) { p.ScaleUpLimits[0].Value = 1001 }, "pool.scaling.scale_up_limits[0].value", "at most 1000 percent"},
		{"limit period unset", func(p *pb.ScalingPolicy) { p.ScaleUpLimits[1].Period = nil }, "pool.scaling.scale_up_limits[1].period", "must be set"},
		{"limit period under 1s", func(p *pb.ScalingPolicy) { p.ScaleUpLimits[1].Period = d(999 * time.Millisecond) },
			"pool.scaling.scale_up_limits[1].period", "must be 1s to 30m0s"},
		{"limit period over 30m", func(p *pb.ScalingPolicy) { p.ScaleDownLimits[0].Period = d(31 * time.Minute) },
			"pool.scaling.scale_down_limits[0].period", "must be 1s to 30m0s"},
		{"limit period invalid", func(p *pb.ScalingPolicy) { p.ScaleDownLimits[0].Period = &durationpb.Duration{Seconds: -1, Nanos: 1} },
			"pool.scaling.scale_down_limits[0].period", "not a valid duration"},
		{"too many limits", func(p *pb.ScalingPolicy) {
			for len(p.ScaleDownLimits) < 11 {
				p.ScaleDownLimits = append(p.ScaleDownLimits, limit(instances, 1, time.Minute))
			}
		}, "pool.scaling.scale_down_limits", "at most 10 limits, got 11"},
		{"select unknown", func(p *pb.ScalingPolicy) { p.ScaleUpSelect = 9 }, "pool.scaling.scale_up_select", "unknown select policy 9"},
		{"down select unknown", func(p *pb.ScalingPolicy) { p.ScaleDownSelect = -1 }, "pool.scaling.scale_down_select", "unknown select policy -1"},
		{"provider empty", func(p *pb.ScalingPolicy) { p.Provider = &pb.ScaleProvider{} }, "pool.scaling.provider", "must set exec or webhook"},
		{"exec nil", func(p *pb.ScalingPolicy) { p.Provider = &pb.ScaleProvider{Provider: &pb.ScaleProvider_Exec{}} },
			"pool.scaling.provider.exec", "must be set"},
		{"exec without command", exec(func(x *pb.ExecProvider) { x.Command = " " }), "pool.scaling.provider.exec.command", "must not be empty"},
		{"exec relative path", exec(func(x *pb.ExecProvider) { x.Command = "bin/add-hosts" }),
			"pool.scaling.provider.exec.command", "absolute path or a program name"},
		{"exec command with NUL", exec(func(x *pb.ExecProvider) { x.Command = "/bin/a\x00b" }),
			"pool.scaling.provider.exec.command", "NUL"},
		{"exec command too long", exec(func(x *pb.ExecProvider) { x.Command = "/" + strings.Repeat("a", 4096) }),
			"pool.scaling.provider.exec.command", "at most 4096 bytes"},
		{"exec argument with NUL", exec(func(x *pb.ExecProvider) { x.Args = []string{"ok", "a\x00"} }),
			"pool.scaling.provider.exec.args[1]", "NUL"},
		{"exec timeout over 10m", exec(func(x *pb.ExecProvider) { x.Timeout = d(10*time.Minute + time.Second) }),
			"pool.scaling.provider.exec.timeout", "at most 10m0s"},
		{"exec timeout negative", exec(func(x *pb.ExecProvider) { x.Timeout = d(-time.Second) }),
			"pool.scaling.provider.exec.timeout", "must not be negative"},
		{"webhook nil", func(p *pb.ScalingPolicy) { p.Provider = &pb.ScaleProvider{Provider: &pb.ScaleProvider_Webhook{}} },
			"pool.scaling.provider.webhook", "must be set"},
		{"webhook without URL", webhook(func(w *pb.WebhookProvider) { w.Url = "" }), "pool.scaling.provider.webhook.url", "must not be empty"},
		{"webhook URL not http", webhook(func(w *pb.WebhookProvider) { w.Url = "ftp://example.com/x" }),
			"pool.scaling.provider.webhook.url", "http or https"},
		{"webhook URL relative", webhook(func(w *pb.WebhookProvider) { w.Url = "/scale" }),
			"pool.scaling.provider.webhook.url", "http or https"},
		{"webhook URL without host", webhook(func(w *pb.WebhookProvider) { w.Url = "http:///scale" }),
			"pool.scaling.provider.webhook.url", "has no host"},
		{"webhook URL does not parse", webhook(func(w *pb.WebhookProvider) { w.Url = "http://[::1" }),
			"pool.scaling.provider.webhook.url", "missing ']'"},
		{"webhook secret too long", webhook(func(w *pb.WebhookProvider) { w.Secret = strings.Repeat("s", 1025) }),
			"pool.scaling.provider.webhook.secret", "at most 1024 bytes"},
		{"webhook timeout over 1m", webhook(func(w *pb.WebhookProvider) { w.Timeout = d(61 * time.Second) }),
			"pool.scaling.provider.webhook.timeout", "at most 1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := good()
			tt.edit(p)
			err := Validate("pool.scaling", p)
			require.Error(t, err)
			require.ErrorIs(t, err, ErrInvalid)
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tt.field, fe.Field, err.Error())
			require.Equal(t, fe.Field+": "+fe.Msg, err.Error())
			require.Contains(t, fe.Msg, tt.msg)
		})
	}
}

func TestValidate_emptyPrefixNamesTheFieldAlone(t *testing.T) {
	err := Validate("", &pb.ScalingPolicy{Metric: pb.ScalingMetric_SCALING_METRIC_HOST_CPU})
	var fe *FieldError
	require.True(t, errors.As(err, &fe))
	require.Equal(t, "target", fe.Field)
	require.Equal(t, "target: must be > 0", err.Error())
}
