package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"
)

// Sender delivers a notification. Send returns nil only once the receiver
// accepted it; it returns when ctx is cancelled.
type Sender interface {
	Send(ctx context.Context, n Notification) error
}

// ErrPermanent marks a delivery failure that retrying cannot fix (a 4xx
// answer other than 408 and 429).
var ErrPermanent = errors.New("permanent delivery failure")

// IdempotencyHeader carries Notification.Key on HTTP deliveries.
const IdempotencyHeader = "Idempotency-Key"

// Retry is a retry policy with jittered exponential back-off: the wait
// before attempt i+1 is d/2 + rand·d/2 with d = min(Max, Base·2^i).
type Retry struct {
	// Attempts is the number of tries, at least 1.
	Attempts int
	Base     time.Duration
	Max      time.Duration
	// Rand returns a number in [0, 1); nil uses math/rand/v2.
	Rand func() float64
	// Sleep waits d or until ctx is done; nil uses a timer.
	Sleep func(ctx context.Context, d time.Duration) error
}

// DefaultRetry tries 5 times, waiting about 0.5 s, 1 s, 2 s, 4 s.
func DefaultRetry() Retry {
	return Retry{Attempts: 5, Base: 500 * time.Millisecond, Max: 30 * time.Second}
}

// backoff returns the wait after failed attempt i (0-based).
func (r Retry) backoff(i int) time.Duration {
	d := r.Base << min(i, 30)
	if d <= 0 || (r.Max > 0 && d > r.Max) {
		d = r.Max
	}
	f := rand.Float64
	if r.Rand != nil {
		f = r.Rand
	}
	return d/2 + time.Duration(f()*float64(d/2))
}

func (r Retry) sleep(ctx context.Context, d time.Duration) error {
	if r.Sleep != nil {
		return r.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Do calls try until it succeeds, fails with ErrPermanent, ctx ends or
// the attempts are spent; it returns the last error.
func (r Retry) Do(ctx context.Context, try func(context.Context) error) error {
	var err error
	for i := range max(r.Attempts, 1) {
		if i > 0 {
			if serr := r.sleep(ctx, r.backoff(i-1)); serr != nil {
				return fmt.Errorf("%w (last error: %v)", serr, err)
			}
		}
		if err = try(ctx); err == nil || errors.Is(err, ErrPermanent) {
			return err
		}
	}
	return err
}

// HTTPSender posts notifications to webhook and Alertmanager receivers;
// the receiver's Kind chooses the body and the path. It is safe for
// concurrent use.
type HTTPSender struct {
	// Client is used for requests; nil means a client with a 10 s timeout.
	Client *http.Client
	// Retry is the retry policy; the zero Retry tries once. Use
	// DefaultRetry() in production.
	Retry Retry
	// AlertmanagerValidFor is the endsAt horizon of firing alerts pushed to
	// an Alertmanager; 0 means 4 minutes (Prometheus' 4 × 1m).
	AlertmanagerValidFor time.Duration
}

var _ Sender = (*HTTPSender)(nil)

var defaultClient = &http.Client{Timeout: 10 * time.Second}

// Send posts n with retries. Each attempt sends the same body and the
// Idempotency-Key header.
func (s *HTTPSender) Send(ctx context.Context, n Notification) error {
	var body any
	target := n.Receiver.URL
	switch n.Receiver.Kind {
	case ReceiverWebhook:
		body = BuildWebhook(n)
	case ReceiverAlertmanager:
		v := s.AlertmanagerValidFor
		if v <= 0 {
			v = 4 * time.Minute
		}
		body = BuildPostableAlerts(n, v)
		target = strings.TrimRight(target, "/") + "/api/v2/alerts"
	default:
		return fmt.Errorf("send to %q: kind %q is not an HTTP receiver: %w", n.Receiver.Name, n.Receiver.Kind, ErrPermanent)
	}
	buf, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("send to %q: encode: %w", n.Receiver.Name, err)
	}
	client := s.Client
	if client == nil {
		client = defaultClient
	}
	err = s.Retry.Do(ctx, func(ctx context.Context) error {
		return post(ctx, client, target, n.Key, buf)
	})
	if err != nil {
		return fmt.Errorf("send to %q: %w", n.Receiver.Name, err)
	}
	return nil
}

func post(ctx context.Context, c *http.Client, target, key string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPermanent, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hostscale-alerts")
	req.Header.Set(IdempotencyHeader, key)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusRequestTimeout && resp.StatusCode != http.StatusTooManyRequests:
		return fmt.Errorf("%w: %s: %s", ErrPermanent, resp.Status, bytes.TrimSpace(msg))
	default:
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
}

// LogSender writes notifications to a logger; it never fails.
type LogSender struct {
	Logger *slog.Logger // nil discards
}

var _ Sender = LogSender{}

// Send logs one line per alert.
func (s LogSender) Send(_ context.Context, n Notification) error {
	if s.Logger == nil {
		return nil
	}
	for _, a := range n.Alerts {
		s.Logger.Info("alert notification", "receiver", n.Receiver.Name, "group", n.GroupKey,
			"key", n.Key, "status", a.State.String(), "alert", a.Rule, "node", a.Node,
			"fingerprint", a.Fingerprint.String(), "value", a.Value, "summary", a.Annotations["summary"])
	}
	return nil
}

// Senders routes a notification to the sender of its receiver's kind.
type Senders struct {
	Log  Sender
	HTTP Sender
}

var _ Sender = Senders{}

// Send delivers n with the sender for n.Receiver.Kind.
func (s Senders) Send(ctx context.Context, n Notification) error {
	var to Sender
	switch n.Receiver.Kind {
	case ReceiverLog:
		to = s.Log
	case ReceiverWebhook, ReceiverAlertmanager:
		to = s.HTTP
	}
	if to == nil {
		return fmt.Errorf("send to %q: no sender for kind %q: %w", n.Receiver.Name, n.Receiver.Kind, ErrPermanent)
	}
	return to.Send(ctx, n)
}
