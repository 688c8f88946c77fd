package alerts

import (
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hostscale/hostscale/internal/labels"
)

// ReceiverKind says how a receiver is reached.
type ReceiverKind string

// The receiver kinds.
const (
	// ReceiverLog writes notifications to the controller's log.
	ReceiverLog ReceiverKind = "log"
	// ReceiverWebhook POSTs Alertmanager's webhook payload (version "4").
	ReceiverWebhook ReceiverKind = "webhook"
	// ReceiverAlertmanager POSTs alerts to an Alertmanager's /api/v2/alerts,
	// which then does its own grouping and routing.
	ReceiverAlertmanager ReceiverKind = "alertmanager"
)

// Receiver is a named notification target.
type Receiver struct {
	Name string
	Kind ReceiverKind
	// URL is the webhook URL, or the Alertmanager base URL
	// (http://am:9093); unused for log receivers.
	URL string
	// SendResolved sends a notification when a notified alert resolves.
	SendResolved bool
	// MaxAlerts caps the alerts of one webhook payload (0: no cap); the
	// rest are counted in truncatedAlerts.
	MaxAlerts int
}

// Route is a node of the routing tree, as in Alertmanager: an alert goes
// down to the first child whose matchers match (and on to later siblings
// when that child has Continue), or stays at this node when no child
// matches. Zero durations, an empty Receiver and a nil GroupBy inherit from
// the parent; at the root they take the defaults (group_wait 30s,
// group_interval 5m, repeat_interval 4h).
type Route struct {
	Receiver string
	Matchers []Matcher
	// GroupBy lists the labels that split alerts into groups; ["..."]
	// groups by all labels (one alert per group); empty puts every alert of
	// the route in one group.
	GroupBy []string
	// GroupWait is how long a new group waits for more alerts before its
	// first notification.
	GroupWait time.Duration
	// GroupInterval is how long a notified group waits before sending a
	// notification about changes (new, re-fired or resolved alerts).
	GroupInterval time.Duration
	// RepeatInterval is how long a group with unchanged firing alerts waits
	// before sending them again.
	RepeatInterval time.Duration
	Continue       bool
	Routes         []Route
}

// Route defaults, Alertmanager's.
const (
	DefaultGroupWait      = 30 * time.Second
	DefaultGroupInterval  = 5 * time.Minute
	DefaultRepeatInterval = 4 * time.Hour
)

// DispatchConfig is the notification configuration.
type DispatchConfig struct {
	Route     Route
	Receivers []Receiver
	// ExternalURL is the controller's URL as receivers should see it; it
	// fills externalURL and the alerts' generatorURL.
	ExternalURL string
}

var receiverNameRE = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$`)

// Validate checks receivers (unique names, kinds, URLs) and the route tree
// (known receivers, matchers, non-negative durations, label names in
// group_by); errors name the field, e.g. `route.routes[1].receiver: unknown
// receiver "pager"`.
func (c DispatchConfig) Validate() error {
	_, err := compileConfig(c)
	return err
}

type route struct {
	receiver               string
	matchers               []compiledMatcher
	groupBy                []string
	groupAll               bool
	wait, interval, repeat time.Duration
	cont                   bool
	key                    string
	children               []*route
}

func compileConfig(c DispatchConfig) (*route, error) {
	rcv := map[string]Receiver{}
	for i, r := range c.Receivers {
		f := fmt.Sprintf("receivers[%d]", i)
		if !receiverNameRE.MatchString(r.Name) {
			return nil, fieldErr(f+".name", "%q: want 1 to 63 characters of [A-Za-z0-9-_.], starting alphanumeric", r.Name)
		}
		if _, dup := rcv[r.Name]; dup {
			return nil, fieldErr(f+".name", "duplicate receiver %q", r.Name)
		}
		switch r.Kind {
		case ReceiverLog:
		case ReceiverWebhook, ReceiverAlertmanager:
			u, err := url.Parse(r.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return nil, fieldErr(f+".url", "%q is not an http(s) URL", r.URL)
			}
		default:
			return nil, fieldErr(f+".kind", "unknown kind %q (want log, webhook or alertmanager)", r.Kind)
		}
		if r.MaxAlerts < 0 {
			return nil, fieldErr(f+".max_alerts", "must not be negative")
		}
		rcv[r.Name] = r
	}
	root := &route{receiver: "", wait: DefaultGroupWait, interval: DefaultGroupInterval, repeat: DefaultRepeatInterval, key: "{}"}
	if c.Route.Receiver == "" {
		return nil, fieldErr("route.receiver", "the root route needs a receiver")
	}
	if len(c.Route.Matchers) > 0 {
		return nil, fieldErr("route.matchers", "the root route matches every alert and takes no matchers")
	}
	if err := compileRoute(c.Route, root, root, "route", rcv); err != nil {
		return nil, err
	}
	return root, nil
}

func compileRoute(r Route, parent, out *route, field string, rcv map[string]Receiver) error {
	*out = route{receiver: parent.receiver, groupBy: parent.groupBy, groupAll: parent.groupAll,
		wait: parent.wait, interval: parent.interval, repeat: parent.repeat, cont: r.Continue, key: parent.key}
	if r.Receiver != "" {
		if _, ok := rcv[r.Receiver]; !ok {
			return fieldErr(field+".receiver", "unknown receiver %q", r.Receiver)
		}
		out.receiver = r.Receiver
	}
	cms, err := compileMatchers(r.Matchers, field+".matchers")
	if err != nil {
		return err
	}
	out.matchers = cms
	if out != parent {
		ms := make([]string, len(r.Matchers))
		for i, m := range r.Matchers {
			ms[i] = m.String()
		}
		out.key = parent.key + "/{" + strings.Join(ms, ",") + "}"
	}
	if r.GroupBy != nil {
		out.groupBy, out.groupAll = nil, false
		for i, l := range r.GroupBy {
			if l == "..." {
				out.groupAll = true
				continue
			}
			if err := labels.CheckKey(l); err != nil {
				return &FieldError{Field: fmt.Sprintf("%s.group_by[%d]", field, i), Err: err}
			}
			out.groupBy = append(out.groupBy, l)
		}
		sort.Strings(out.groupBy)
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"group_wait", r.GroupWait}, {"group_interval", r.GroupInterval}, {"repeat_interval", r.RepeatInterval}} {
		if d.d < 0 {
			return fieldErr(field+"."+d.name, "must not be negative, got %s", d.d)
		}
	}
	if r.GroupWait > 0 {
		out.wait = r.GroupWait
	}
	if r.GroupInterval > 0 {
		out.interval = r.GroupInterval
	}
	if r.RepeatInterval > 0 {
		out.repeat = r.RepeatInterval
	}
	for i, child := range r.Routes {
		c := &route{}
		if err := compileRoute(child, out, c, field+".routes["+strconv.Itoa(i)+"]", rcv); err != nil {
			return err
		}
		out.children = append(out.children, c)
	}
	return nil
}

// match returns the routes an alert with labels ls goes to.
func (r *route) match(ls map[string]string) []*route {
	if !matchAll(r.matchers, ls) {
		return nil
	}
	var all []*route
	for _, c := range r.children {
		m := c.match(ls)
		if len(m) == 0 {
			continue
		}
		all = append(all, m...)
		if !c.cont {
			break
		}
	}
	if len(all) == 0 {
		return []*route{r}
	}
	return all
}

// group returns the alert's group labels and group key, formatted as
// Alertmanager does: `{}/{severity="critical"}:{alertname="x"}`.
func (r *route) group(ls map[string]string) (map[string]string, string) {
	gl := map[string]string{}
	if r.groupAll {
		for k, v := range ls {
			gl[k] = v
		}
	} else {
		for _, k := range r.groupBy {
			if v, ok := ls[k]; ok {
				gl[k] = v
			}
		}
	}
	parts := make([]string, 0, len(gl))
	for _, k := range sortedKeys(gl) {
		parts = append(parts, k+"="+strconv.Quote(gl[k]))
	}
	return gl, r.key + ":{" + strings.Join(parts, ", ") + "}"
}
