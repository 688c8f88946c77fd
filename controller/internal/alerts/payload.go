package alerts

import (
	"net/url"
	"time"
)

// WebhookMessage is Alertmanager's webhook payload, version "4", as
// documented for webhook_config.
type WebhookMessage struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []WebhookAlert    `json:"alerts"`
}

// WebhookAlert is one alert of a WebhookMessage. EndsAt is the zero time
// (0001-01-01T00:00:00Z) while the alert fires, as Alertmanager sends it.
type WebhookAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// GeneratorURL is the link from an alert back to its rule:
// <externalURL>/alerts/rules/<rule>.
func GeneratorURL(externalURL, rule string) string {
	return externalURL + "/alerts/rules/" + url.PathEscape(rule)
}

// BuildWebhook builds the webhook payload of n. Maps are never null. The
// alerts past the receiver's MaxAlerts are left out and counted in
// TruncatedAlerts; common labels and annotations are computed over the
// alerts sent.
func BuildWebhook(n Notification) WebhookMessage {
	alerts := n.Alerts
	truncated := 0
	if m := n.Receiver.MaxAlerts; m > 0 && len(alerts) > m {
		truncated, alerts = len(alerts)-m, alerts[:m]
	}
	msg := WebhookMessage{
		Version: "4", GroupKey: n.GroupKey, TruncatedAlerts: truncated, Status: n.Status(),
		Receiver: n.Receiver.Name, GroupLabels: nonNil(n.GroupLabels), ExternalURL: n.ExternalURL,
		Alerts: make([]WebhookAlert, 0, len(alerts)),
	}
	ls := make([]map[string]string, len(alerts))
	as := make([]map[string]string, len(alerts))
	for i, a := range alerts {
		ls[i], as[i] = a.Labels, a.Annotations
		w := WebhookAlert{
			Status: "firing", Labels: nonNil(a.Labels), Annotations: nonNil(a.Annotations),
			StartsAt: a.FiredAt.UTC(), GeneratorURL: GeneratorURL(n.ExternalURL, a.Rule),
			Fingerprint: a.Fingerprint.String(),
		}
		if a.State == StateResolved {
			w.Status, w.EndsAt = "resolved", a.ResolvedAt.UTC()
		}
		msg.Alerts = append(msg.Alerts, w)
	}
	msg.CommonLabels, msg.CommonAnnotations = common(ls), common(as)
	return msg
}

// PostableAlert is one element of the body of Alertmanager's
// POST /api/v2/alerts (the postableAlerts array).
type PostableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

// BuildPostableAlerts builds the /api/v2/alerts body of n. A firing alert
// gets endsAt = n.At + validFor, as Prometheus sends (4 × its resend
// delay): Alertmanager resolves it by itself unless it is sent again
// before then, so routes to an Alertmanager receiver need a
// repeat_interval below validFor. A resolved alert gets its resolution
// time.
func BuildPostableAlerts(n Notification, validFor time.Duration) []PostableAlert {
	out := make([]PostableAlert, 0, len(n.Alerts))
	for _, a := range n.Alerts {
		p := PostableAlert{
			Labels: nonNil(a.Labels), Annotations: a.Annotations, StartsAt: a.FiredAt.UTC(),
			EndsAt: n.At.Add(validFor).UTC(), GeneratorURL: GeneratorURL(n.ExternalURL, a.Rule),
		}
		if a.State == StateResolved {
			p.EndsAt = a.ResolvedAt.UTC()
		}
		out = append(out, p)
	}
	return out
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// common returns the pairs present with the same value in every map.
func common(ms []map[string]string) map[string]string {
	out := map[string]string{}
	if len(ms) == 0 {
		return out
	}
	for k, v := range ms[0] {
		all := true
		for _, m := range ms[1:] {
			if w, ok := m[k]; !ok || w != v {
				all = false
				break
			}
		}
		if all {
			out[k] = v
		}
	}
	return out
}
