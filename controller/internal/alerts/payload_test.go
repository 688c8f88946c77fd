package alerts

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func payloadNotification() Notification {
	a := mkAlert("cpu-high", "n1", SeverityWarning, t0)
	b := resolve(mkAlert("cpu-high", "n2", SeverityWarning, t0), t0.Add(2*time.Minute))
	b.Annotations = map[string]string{"summary": "other"}
	return Notification{
		Key: "k1", Receiver: Receiver{Name: "hook", Kind: ReceiverWebhook, URL: "http://x"},
		GroupKey: `{}:{alertname="cpu-high"}`, GroupLabels: map[string]string{"alertname": "cpu-high"},
		Alerts: []Alert{a, b}, AlertKeys: []string{AlertKey(a), AlertKey(b)},
		At: t0.Add(3 * time.Minute), ExternalURL: "http://controller:8080",
	}
}

func TestBuildWebhook_golden(t *testing.T) {
	n := payloadNotification()
	raw, err := json.MarshalIndent(BuildWebhook(n), "", "  ")
	require.NoError(t, err)
	require.JSONEq(t, `{
  "version": "4",
  "groupKey": "{}:{alertname=\"cpu-high\"}",
  "truncatedAlerts": 0,
  "status": "firing",
  "receiver": "hook",
  "groupLabels": {"alertname": "cpu-high"},
  "commonLabels": {"alertname": "cpu-high", "severity": "warning"},
  "commonAnnotations": {},
  "externalURL": "http://controller:8080",
  "alerts": [
    {
      "status": "firing",
      "labels": {"alertname": "cpu-high", "node": "n1", "severity": "warning"},
      "annotations": {"summary": "cpu-high on n1"},
      "startsAt": "2025-03-01T12:00:00Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://controller:8080/alerts/rules/cpu-high",
      "fingerprint": "`+n.Alerts[0].Fingerprint.String()+`"
    },
    {
      "status": "resolved",
      "labels": {"alertname": "cpu-high", "node": "n2", "severity": "warning"},
      "annotations": {"summary": "other"},
      "startsAt": "2025-03-01T12:00:00Z",
      "endsAt": "2025-03-01T12:02:00Z",
      "generatorURL": "http://controller:8080/alerts/rules/cpu-high",
      "fingerprint": "`+n.Alerts[1].Fingerprint.String()+`"
    }
  ]
}`, string(raw))
}

func TestBuildWebhook_resolvedStatusTruncationAndNonNullMaps(t *testing.T) {
	n := payloadNotification()
	n.Alerts = n.Alerts[1:]
	n.GroupLabels = nil
	msg := BuildWebhook(n)
	require.Equal(t, "resolved", msg.Status)
	require.Equal(t, map[string]string{"summary": "other"}, msg.CommonAnnotations)

	n = payloadNotification()
	n.Receiver.MaxAlerts = 1
	n.GroupLabels = nil
	n.Alerts[0].Annotations = nil
	raw, err := json.Marshal(BuildWebhook(n))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m))
	require.Equal(t, 1.0, m["truncatedAlerts"])
	require.Len(t, m["alerts"], 1)
	require.Equal(t, map[string]any{}, m["groupLabels"])
	require.Equal(t, map[string]any{}, m["alerts"].([]any)[0].(map[string]any)["annotations"])
}

func TestBuildPostableAlerts_golden(t *testing.T) {
	n := payloadNotification()
	raw, err := json.Marshal(BuildPostableAlerts(n, 4*time.Minute))
	require.NoError(t, err)
	require.JSONEq(t, `[
  {
    "labels": {"alertname": "cpu-high", "node": "n1", "severity": "warning"},
    "annotations": {"summary": "cpu-high on n1"},
    "startsAt": "2025-03-01T12:00:00Z",
    "endsAt": "2025-03-01T12:07:00Z",
    "generatorURL": "http://controller:8080/alerts/rules/cpu-high"
  },
  {
    "labels": {"alertname": "cpu-high", "node": "n2", "severity": "warning"},
    "annotations": {"summary": "other"},
    "startsAt": "2025-03-01T12:00:00Z",
    "endsAt": "2025-03-01T12:02:00Z",
    "generatorURL": "http://controller:8080/alerts/rules/cpu-high"
  }
]`, string(raw))
}
