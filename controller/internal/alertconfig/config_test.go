package alertconfig

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/controller/internal/alerts"
)

func TestParse_routesByLabels(t *testing.T) {
	cfg, err := Parse([]byte(`{
	  "receivers": [
	    {"name": "ops", "kind": "webhook", "url": "http://127.0.0.1:1/a", "send_resolved": true},
	    {"name": "pager", "kind": "alertmanager", "url": "http://127.0.0.1:2"}
	  ],
	  "route": {"receiver": "ops", "group_by": ["alertname"], "group_wait": "2s", "repeat_interval": "1h",
	    "routes": [{"matchers": ["severity=critical", "node=~web-.*", "zone!=b"], "receiver": "pager"}]}
	}`))
	require.NoError(t, err)
	require.Equal(t, 2*time.Second, cfg.Route.GroupWait)
	require.Equal(t, []alerts.Matcher{
		{Name: "severity", Value: "critical", IsEqual: true},
		{Name: "node", Value: "web-.*", IsEqual: true, IsRegex: true},
		{Name: "zone", Value: "b"},
	}, cfg.Route.Routes[0].Matchers)
	_, err = alerts.NewDispatcher(cfg)
	require.NoError(t, err)
}

func TestParse_errorsNameTheField(t *testing.T) {
	for in, want := range map[string]string{
		`{"route": {"receiver": "x"}, "receivers": [], "extra": 1}`: "unknown field",
		`{"receivers": []}`: "route",
		`{"route": {"receiver": "nobody"}, "receivers": []}`:                                                           "route.receiver",
		`{"route": {"receiver": "a", "group_wait": 5}, "receivers": [{"name": "a", "kind": "log"}]}`:                   "duration",
		`{"route": {"receiver": "a", "routes": [{"matchers": ["bad"]}]}, "receivers": [{"name": "a", "kind": "log"}]}`: "route.routes[0].matchers[0]",
		`{"route": {"receiver": "a"}, "receivers": [{"name": "a", "kind": "pigeon"}]}`:                                 "kind",
	} {
		_, err := Parse([]byte(in))
		require.Error(t, err, in)
		require.Contains(t, err.Error(), want, in)
	}
}
