package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// recorder is a receiver that fails the first failures requests, then
// keeps the accepted bodies by idempotency key.
type recorder struct {
	mu       sync.Mutex
	failures int
	status   int
	requests int
	paths    []string
	accepted map[string][][]byte
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests++
	r.paths = append(r.paths, req.URL.Path)
	if r.failures > 0 {
		r.failures--
		w.WriteHeader(r.status)
		return
	}
	if req.Header.Get("Content-Type") != "application/json" {
		w.WriteHeader(http.StatusUnsupportedMediaType)
		return
	}
	if r.accepted == nil {
		r.accepted = map[string][][]byte{}
	}
	k := req.Header.Get(IdempotencyHeader)
	r.accepted[k] = append(r.accepted[k], body)
}

// instantRetry retries without waiting and records the back-offs.
func instantRetry(waits *[]time.Duration) Retry {
	return Retry{Attempts: 5, Base: 100 * time.Millisecond, Max: time.Second,
		Rand: func() float64 { return 0.5 },
		Sleep: func(ctx context.Context, d time.Duration) error {
			*waits = append(*waits, d)
			return ctx.Err()
		}}
}

func TestHTTPSender_retriesThenDeliversExactlyOnce(t *testing.T) {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusInternalServerError} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			rec := &recorder{failures: 3, status: status}
			srv := httptest.NewServer(rec)
			defer srv.Close()
			var waits []time.Duration
			s := &HTTPSender{Client: srv.Client(), Retry: instantRetry(&waits)}
			n := payloadNotification()
			n.Receiver.URL = srv.URL + "/hook"

			require.NoError(t, s.Send(context.Background(), n))
			require.Equal(t, 4, rec.requests)
			require.Len(t, rec.accepted, 1)
			require.Len(t, rec.accepted[n.Key], 1, "exactly one delivered body per key")
			var msg WebhookMessage
			require.NoError(t, json.Unmarshal(rec.accepted[n.Key][0], &msg))
			require.Equal(t, "4", msg.Version)
			require.Len(t, msg.Alerts, 2)
			// d/2 + 0.5·d/2 with d = 100ms, 200ms, 400ms
			require.Equal(t, []time.Duration{75 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond}, waits)
		})
	}
}

func TestHTTPSender_sameBodyOnEveryAttempt(t *testing.T) {
	var mu sync.Mutex
	var bodies [][]byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		bodies = append(bodies, b)
		if len(bodies) < 3 {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	defer srv.Close()
	var waits []time.Duration
	n := payloadNotification()
	n.Receiver.URL = srv.URL
	require.NoError(t, (&HTTPSender{Client: srv.Client(), Retry: instantRetry(&waits)}).Send(context.Background(), n))
	require.Len(t, bodies, 3)
	require.True(t, bytes.Equal(bodies[0], bodies[2]))
}

func TestHTTPSender_permanentFailureIsNotRetried(t *testing.T) {
	rec := &recorder{failures: 10, status: http.StatusBadRequest}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	var waits []time.Duration
	n := payloadNotification()
	n.Receiver.URL = srv.URL
	err := (&HTTPSender{Client: srv.Client(), Retry: instantRetry(&waits)}).Send(context.Background(), n)
	require.ErrorIs(t, err, ErrPermanent)
	require.ErrorContains(t, err, `send to "hook"`)
	require.Equal(t, 1, rec.requests)
}

func TestHTTPSender_givesUpAfterAttempts(t *testing.T) {
	rec := &recorder{failures: 10, status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	var waits []time.Duration
	n := payloadNotification()
	n.Receiver.URL = srv.URL
	err := (&HTTPSender{Client: srv.Client(), Retry: instantRetry(&waits)}).Send(context.Background(), n)
	require.ErrorContains(t, err, "503")
	require.Equal(t, 5, rec.requests)
	require.Equal(t, []time.Duration{75 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond, 600 * time.Millisecond}, waits)
	r := instantRetry(&waits)
	require.Equal(t, 750*time.Millisecond, r.backoff(4), "back-off is capped at Max")
	require.Equal(t, 750*time.Millisecond, r.backoff(62), "no overflow")
}

func TestHTTPSender_stopsWhenContextIsCancelled(t *testing.T) {
	rec := &recorder{failures: 10, status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	n := payloadNotification()
	n.Receiver.URL = srv.URL
	s := &HTTPSender{Client: srv.Client(), Retry: Retry{Attempts: 5, Base: time.Hour,
		Sleep: func(ctx context.Context, _ time.Duration) error { cancel(); <-ctx.Done(); return ctx.Err() }}}
	require.ErrorIs(t, s.Send(ctx, n), context.Canceled)
	require.Equal(t, 1, rec.requests)
}

func TestHTTPSender_alertmanagerPostsToAPIv2(t *testing.T) {
	rec := &recorder{failures: 1, status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	var waits []time.Duration
	n := payloadNotification()
	n.Receiver = Receiver{Name: "am", Kind: ReceiverAlertmanager, URL: srv.URL + "/"}
	require.NoError(t, (&HTTPSender{Client: srv.Client(), Retry: instantRetry(&waits)}).Send(context.Background(), n))
	require.Equal(t, []string{"/api/v2/alerts", "/api/v2/alerts"}, rec.paths)
	var body []PostableAlert
	require.NoError(t, json.Unmarshal(rec.accepted[n.Key][0], &body))
	require.Len(t, body, 2)
	require.Equal(t, n.At.Add(4*time.Minute), body[0].EndsAt)
}

func TestRetry_defaultSleepHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	err := Retry{Attempts: 3, Base: time.Hour}.Do(ctx, func(context.Context) error { calls++; return io.ErrUnexpectedEOF })
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorContains(t, err, io.ErrUnexpectedEOF.Error())
	require.Equal(t, 1, calls)
}

func TestSenders_routeByKind(t *testing.T) {
	var buf bytes.Buffer
	s := Senders{Log: LogSender{Logger: slog.New(slog.NewJSONHandler(&buf, nil))}}
	n := payloadNotification()
	n.Receiver = Receiver{Name: "log", Kind: ReceiverLog}
	require.NoError(t, s.Send(context.Background(), n))
	require.Contains(t, buf.String(), `"alert":"cpu-high"`)
	require.Contains(t, buf.String(), `"key":"k1"`)
	n.Receiver.Kind = ReceiverWebhook
	require.ErrorIs(t, s.Send(context.Background(), n), ErrPermanent)
}

// End to end over loopback: evaluate, plan, send with a failing receiver,
// record, and plan again: exactly one firing and one resolved body arrive.
func TestPipeline_deliversEachTransitionOnce(t *testing.T) {
	rec := &recorder{failures: 2, status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	d, err := NewDispatcher(DispatchConfig{
		Route:     Route{Receiver: "hook", GroupBy: []string{"alertname"}, GroupWait: time.Second, GroupInterval: time.Second},
		Receivers: []Receiver{{Name: "hook", Kind: ReceiverWebhook, URL: srv.URL, SendResolved: true}},
	})
	require.NoError(t, err)
	var waits []time.Duration
	s := &HTTPSender{Client: srv.Client(), Retry: instantRetry(&waits)}
	h := newHarness(t, cpuRule())
	var l Ledger
	for i := range 20 {
		at := time.Duration(i) * 10 * time.Second
		v := 95.0
		if i >= 12 {
			v = 10
		}
		h.eval(at, v)
		for _, n := range d.Plan(t0.Add(at), h.cur, nil, l).Notifications {
			require.NoError(t, s.Send(context.Background(), n))
			l.Record(n.Delivery(t0.Add(at)))
		}
	}
	require.Len(t, rec.accepted, 2)
	var statuses []string
	for _, bodies := range rec.accepted {
		require.Len(t, bodies, 1)
		var msg WebhookMessage
		require.NoError(t, json.Unmarshal(bodies[0], &msg))
		statuses = append(statuses, msg.Status)
	}
	require.ElementsMatch(t, []string{"firing", "resolved"}, statuses)
}
