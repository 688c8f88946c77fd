package alerts

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func cpuRule() Rule {
	return Rule{
		Name: "cpu-high", Metric: "cpu_percent", Op: OpGT, Threshold: 90, For: time.Minute,
		Severity:    SeverityWarning,
		Labels:      map[string]string{"team": "infra"},
		Annotations: map[string]string{"summary": `{{ .Node }} cpu {{ printf "%.0f" .Value }}`},
	}
}

func TestRule_Validate_namesBadField(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*Rule)
		field string
		msg   string
	}{
		{"bad name", func(r *Rule) { r.Name = "CPU_High" }, "rule.name", "not a DNS label"},
		{"empty name", func(r *Rule) { r.Name = "" }, "rule.name", "not a DNS label"},
		{"unknown metric", func(r *Rule) { r.Metric = "cpu" }, "rule.metric", `unknown series "cpu"`},
		{"unknown operator", func(r *Rule) { r.Op = "=>" }, "rule.op", `unknown operator "=>"`},
		{"nan threshold", func(r *Rule) { r.Threshold = math.NaN() }, "rule.threshold", "must be finite"},
		{"negative for", func(r *Rule) { r.For = -time.Second }, "rule.for", "must not be negative"},
		{"invalid selector", func(r *Rule) { r.Selector = "zone in (a" }, "rule.selector", "selector"},
		{"bad label key", func(r *Rule) { r.Labels = map[string]string{"-x": "y"} }, "rule.labels", "label key"},
		{"reserved label", func(r *Rule) { r.Labels = map[string]string{"node": "y"} }, "rule.labels", "reserved"},
		{"template does not parse", func(r *Rule) { r.Annotations = map[string]string{"summary": "{{ .Node "} }, "rule.annotations.summary", "template: summary:"},
		{"template unknown field", func(r *Rule) { r.Annotations = map[string]string{"description": "{{ .Host }}"} }, "rule.annotations.description", "can't evaluate field Host"},
		{"unknown severity", func(r *Rule) { r.Severity = "page" }, "rule.severity", `unknown severity "page"`},
		{"unknown kind", func(r *Rule) { r.Kind = "absent" }, "rule.kind", `unknown kind "absent"`},
		{"node down with metric", func(r *Rule) { r.Kind = KindNodeDown }, "rule.metric", "must be empty"},
		{"unknown condition", func(r *Rule) { r.Kind, r.Metric, r.Op = KindNodeCondition, "cpu_percent", "" }, "rule.metric",
			`unknown condition "cpu_percent" (want one of disk_pressure, memory_pressure, disk_stalled, or empty for any)`},
		{"condition with an operator", func(r *Rule) { r.Kind, r.Metric = KindNodeCondition, "disk_pressure" }, "rule.op", "must be empty"},
		{"unknown pool metric", func(r *Rule) { r.Kind = KindPoolThreshold }, "rule.metric", `unknown pool metric "cpu_percent" (want one of request_rate, error_rate`},
		{"pool rule without an operator", func(r *Rule) { r.Kind, r.Metric, r.Op = KindPoolThreshold, "error_ratio", "" }, "rule.op", "unknown operator"},
		{"pool rule with an infinite threshold", func(r *Rule) { r.Kind, r.Metric, r.Threshold = KindPoolThreshold, "error_ratio", math.Inf(1) }, "rule.threshold", "must be finite"},
		{"pool window too short", func(r *Rule) { r.Kind, r.Metric, r.Window = KindPoolThreshold, "error_ratio", time.Second }, "rule.window", "between 10s and 10m0s"},
		{"pool window too long", func(r *Rule) { r.Kind, r.Metric, r.Window = KindPoolThreshold, "error_ratio", time.Hour }, "rule.window", "between 10s and 10m0s"},
		{"window on a node rule", func(r *Rule) { r.Window = time.Minute }, "rule.window", "only a pool_threshold rule has a window"},
		{"reserved pool label", func(r *Rule) { r.Labels = map[string]string{"pool": "y"} }, "rule.labels", "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := cpuRule()
			tt.edit(&r)
			err := r.Validate()
			require.Error(t, err)
			require.ErrorIs(t, err, ErrInvalid)
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			require.Equal(t, tt.field, fe.Field)
			require.True(t, strings.HasPrefix(err.Error(), tt.field+": "), err.Error())
			require.Contains(t, err.Error(), tt.msg)
		})
	}
}

func TestRule_Validate_acceptsGoodRules(t *testing.T) {
	r := cpuRule()
	r.Selector = "zone in (a,b),!legacy"
	require.NoError(t, r.Validate())
	for _, d := range DefaultRules() {
		require.NoError(t, d.Validate(), d.Name)
	}
	require.NoError(t, ValidateRules(DefaultRules()))
	for _, m := range PoolMetrics {
		r := Rule{Name: "p", Kind: KindPoolThreshold, Metric: m, Op: OpGE, Threshold: 1, Window: 30 * time.Second, Severity: SeverityWarning,
			Annotations: map[string]string{"summary": "{{ .Pool }} at {{ .Value }}"}}
		require.NoError(t, r.Validate(), m)
		require.Equal(t, "pool "+m+" >= 1", r.Expr())
	}
	for _, m := range append([]string{""}, Conditions...) {
		r := Rule{Name: "c", Kind: KindNodeCondition, Metric: m, Severity: SeverityWarning}
		require.NoError(t, r.Validate(), m)
		require.Equal(t, strings.TrimSpace("node_condition "+m), r.Expr())
	}
}

func TestRule_Validate_unknownMetricMessage(t *testing.T) {
	r := cpuRule()
	r.Metric = "cpu"
	require.EqualError(t, r.Validate(), `rule.metric: unknown series "cpu"`)
}

func TestValidateRules_namesIndexAndDuplicates(t *testing.T) {
	bad := cpuRule()
	bad.For = -1
	err := ValidateRules([]Rule{cpuRule(), bad})
	require.ErrorContains(t, err, "rules[1].for: must not be negative")

	err = ValidateRules([]Rule{cpuRule(), cpuRule()})
	require.EqualError(t, err, `rules[1].name: "cpu-high" duplicates rules[0]`)
}

func TestDefaultRules_classicThresholds(t *testing.T) {
	got := map[string]string{}
	for _, r := range DefaultRules() {
		got[r.Name] = r.Expr() + " for " + r.For.String()
	}
	require.Equal(t, map[string]string{
		"host-cpu-high":          "cpu_percent > 90 for 1m0s",
		"host-memory-high":       "memory_used_percent > 80 for 1m0s",
		"host-disk-high":         "disk_used_percent > 90 for 1m0s",
		"node-down":              "node_down for 0s",
		"node-disk-stalled":      "node_condition disk_stalled for 1m0s",
		"pool-errors":            "pool error_ratio > 0.05 for 5m0s",
		"pool-instances-missing": "pool missing_instances > 0 for 15m0s",
	}, got)
}

func TestParseExpr(t *testing.T) {
	tests := []struct {
		in      string
		want    Expr
		wantErr string
	}{
		{in: "cpu_percent > 90", want: Expr{"cpu_percent", OpGT, 90}},
		{in: "  memory_used_percent>=80.5 ", want: Expr{"memory_used_percent", OpGE, 80.5}},
		{in: "load1<0.5", want: Expr{"load1", OpLT, 0.5}},
		{in: "processes <= 1e3", want: Expr{"processes", OpLE, 1000}},
		{in: "tcp_connections == -1", want: Expr{"tcp_connections", OpEQ, -1}},
		{in: "swap_used_percent != 0", want: Expr{"swap_used_percent", OpNE, 0}},
		{in: "", wantErr: "want a metric name"},
		{in: "> 90", wantErr: "want a metric name"},
		{in: "cpu_percent => 90", wantErr: `unknown operator "=>"`},
		{in: "cpu_percent 90", wantErr: `unknown operator ""`},
		{in: "cpu_percent > ", wantErr: "want a finite decimal number"},
		{in: "cpu_percent > NaN", wantErr: "want a finite decimal number"},
		{in: "cpu_percent > Inf", wantErr: "want a finite decimal number"},
		{in: "cpu_percent > 0x10", wantErr: "want a finite decimal number"},
		{in: "cpu_percent > 90 and", wantErr: "unexpected"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseExpr(tt.in)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			back, err := ParseExpr(got.String())
			require.NoError(t, err)
			require.Equal(t, got, back)
		})
	}
}

func TestRule_WithExpr(t *testing.T) {
	e, err := ParseExpr("disk_used_percent >= 95")
	require.NoError(t, err)
	r := Rule{Name: "disk", For: time.Minute, Severity: SeverityCritical}.WithExpr(e)
	require.NoError(t, r.Validate())
	require.Equal(t, "disk_used_percent >= 95", r.Expr())
}

func TestFieldError_isNotOtherSentinels(t *testing.T) {
	err := cpuRule().Validate()
	require.NoError(t, err)
	r := cpuRule()
	r.For = -1
	require.False(t, errors.Is(r.Validate(), ErrPermanent))
}
