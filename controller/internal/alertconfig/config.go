// Package alertconfig reads the controller's alert delivery file: the
// receivers and the routing tree, in the spirit of alertmanager.yml, as
// JSON:
//
//	{
//	  "receivers": [
//	    {"name": "ops", "kind": "webhook", "url": "http://hooks.example/alert", "send_resolved": true},
//	    {"name": "pager", "kind": "alertmanager", "url": "http://am.example:9093"}
//	  ],
//	  "route": {
//	    "receiver": "ops", "group_by": ["alertname"], "group_wait": "10s",
//	    "group_interval": "5m", "repeat_interval": "4h",
//	    "routes": [{"matchers": ["severity=critical", "node=~web-.*"], "receiver": "pager", "continue": true}]
//	  }
//	}
//
// A matcher is name=value, name!=value, name=~regex or name!~regex.
package alertconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hostscale/hostscale/controller/internal/alerts"
)

type file struct {
	Receivers []receiver `json:"receivers"`
	Route     *route     `json:"route"`
}

type receiver struct {
	Name         string `json:"name"`
	Kind         string `json:"kind"`
	URL          string `json:"url"`
	SendResolved bool   `json:"send_resolved"`
	MaxAlerts    int    `json:"max_alerts"`
}

type route struct {
	Receiver       string   `json:"receiver"`
	Matchers       []string `json:"matchers"`
	GroupBy        []string `json:"group_by"`
	GroupWait      duration `json:"group_wait"`
	GroupInterval  duration `json:"group_interval"`
	RepeatInterval duration `json:"repeat_interval"`
	Continue       bool     `json:"continue"`
	Routes         []route  `json:"routes"`
}

type duration time.Duration

func (d *duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"30s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

// Load reads and validates a delivery file; errors name the file and the
// field.
func Load(path string) (alerts.DispatchConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return alerts.DispatchConfig{}, err
	}
	cfg, err := Parse(data)
	if err != nil {
		return alerts.DispatchConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates a delivery file's contents.
func Parse(data []byte) (alerts.DispatchConfig, error) {
	var f file
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return alerts.DispatchConfig{}, fmt.Errorf("decode: %w", err)
	}
	if f.Route == nil {
		return alerts.DispatchConfig{}, fmt.Errorf("route: must be set")
	}
	var cfg alerts.DispatchConfig
	for _, r := range f.Receivers {
		cfg.Receivers = append(cfg.Receivers, alerts.Receiver{
			Name: r.Name, Kind: alerts.ReceiverKind(r.Kind), URL: r.URL, SendResolved: r.SendResolved, MaxAlerts: r.MaxAlerts,
		})
	}
	rt, err := convert(*f.Route, "route")
	if err != nil {
		return alerts.DispatchConfig{}, err
	}
	cfg.Route = rt
	if err := cfg.Validate(); err != nil {
		return alerts.DispatchConfig{}, err
	}
	if _, err := alerts.NewDispatcher(cfg); err != nil {
		return alerts.DispatchConfig{}, err
	}
	return cfg, nil
}

func convert(r route, field string) (alerts.Route, error) {
	out := alerts.Route{
		Receiver: r.Receiver, GroupBy: r.GroupBy, GroupWait: time.Duration(r.GroupWait),
		GroupInterval: time.Duration(r.GroupInterval), RepeatInterval: time.Duration(r.RepeatInterval), Continue: r.Continue,
	}
	for i, m := range r.Matchers {
		mm, err := parseMatcher(m)
		if err != nil {
			return alerts.Route{}, fmt.Errorf("%s.matchers[%d]: %w", field, i, err)
		}
		out.Matchers = append(out.Matchers, mm)
	}
	for i, c := range r.Routes {
		cr, err := convert(c, fmt.Sprintf("%s.routes[%d]", field, i))
		if err != nil {
			return alerts.Route{}, err
		}
		out.Routes = append(out.Routes, cr)
	}
	return out, nil
}

func parseMatcher(s string) (alerts.Matcher, error) {
	for _, op := range []string{"!~", "=~", "!=", "="} {
		if name, value, ok := strings.Cut(s, op); ok {
			name = strings.TrimSpace(name)
			if name == "" {
				return alerts.Matcher{}, fmt.Errorf("%q: no label name", s)
			}
			return alerts.Matcher{
				Name: name, Value: strings.Trim(strings.TrimSpace(value), `"`),
				IsEqual: op == "=" || op == "=~", IsRegex: op == "=~" || op == "!~",
			}, nil
		}
	}
	return alerts.Matcher{}, fmt.Errorf("%q: want name=value, name!=value, name=~re or name!~re", s)
}
