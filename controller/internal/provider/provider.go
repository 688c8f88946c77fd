package provider

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/backoff"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Kinds of provider, as in ProviderResult.kind.
const (
	KindExec    = "exec"
	KindWebhook = "webhook"
)

// Timeouts of one attempt: the default when the provider sets none, and
// the most a provider may ask for (longer ones are cut to it; the API
// rejects them before they get here).
const (
	DefaultExecTimeout    = 30 * time.Second
	MaxExecTimeout        = 10 * time.Minute
	DefaultWebhookTimeout = 10 * time.Second
	MaxWebhookTimeout     = time.Minute
)

// MaxOutput bounds ProviderResult.output in bytes, the "…" mark included.
const MaxOutput = 4 << 10

// Retry policy for callers of Call.
const (
	// MaxAttempts is the number of attempts for one event.
	MaxAttempts = 5
	// BaseBackoff is the wait after the first failed attempt; it doubles
	// after each following one, up to MaxBackoff.
	BaseBackoff = time.Second
	MaxBackoff  = time.Minute
)

// ellipsis marks where output was cut.
const ellipsis = "…"

// Backoff returns how long to wait after failed attempt number attempt
// (1-based) before the next: 1s, 2s, 4s, 8s, ... capped at MaxBackoff.
// An attempt below 1 counts as 1.
func Backoff(attempt int) time.Duration {
	return backoff.Exponential(BaseBackoff, MaxBackoff, attempt-1)
}

// Call makes one attempt of provider p for event ev and returns its
// outcome: kind, ok, exit_code (exec) or http_status (webhook), bounded
// output, error text and time (now, the time the attempt started). It
// leaves attempts and done to the caller. ev.desired is the new count and
// ev.previous_desired the old one. Call returns when the attempt ends, its
// timeout passes or ctx is cancelled; it never returns nil and is safe for
// concurrent use. It does not modify p or ev.
func Call(ctx context.Context, p *pb.ScaleProvider, ev *pb.ScaleEvent, now time.Time) *pb.ProviderResult {
	r := &pb.ProviderResult{Time: timestamppb.New(now)}
	switch {
	case p.GetExec() != nil:
		r.Kind = KindExec
		callExec(ctx, p.GetExec(), ev, r)
	case p.GetWebhook() != nil:
		r.Kind = KindWebhook
		callWebhook(ctx, p.GetWebhook(), ev, r)
	default:
		r.Error = "the pool has no provider"
	}
	r.Error = strings.ToValidUTF8(r.Error, "\uFFFD")
	return r
}

// errTimeout is the cause of an attempt's context when its own timeout
// passed, telling it apart from the caller's cancellation.
var errTimeout = errors.New("provider timeout")

// withTimeout bounds one attempt.
func withTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, d, errTimeout)
}

// ctxError describes why an attempt's context ended, or returns "" when it
// has not.
func ctxError(ctx context.Context, timeout time.Duration) string {
	switch {
	case ctx.Err() == nil:
		return ""
	case errors.Is(context.Cause(ctx), errTimeout):
		return fmt.Sprintf("timed out after %s", timeout)
	default:
		return fmt.Sprintf("cancelled: %v", context.Cause(ctx))
	}
}

// timeout returns d, or def when d is unset or not positive, at most most.
func timeout(d *durationpb.Duration, def, most time.Duration) time.Duration {
	if d == nil {
		return def
	}
	t := d.AsDuration()
	if t <= 0 {
		return def
	}
	return min(t, most)
}

// clip makes b valid UTF-8 and at most MaxOutput bytes. With tail it keeps
// the end and marks a cut with a leading "…", otherwise the start with a
// trailing one. cut says that b was already cut from something longer.
// Cuts fall on rune boundaries.
func clip(b []byte, tail, cut bool) string {
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	if !cut && len(s) <= MaxOutput {
		return s
	}
	n := MaxOutput - len(ellipsis)
	if tail {
		if len(s) > n {
			i := len(s) - n
			for i < len(s) && !utf8.RuneStart(s[i]) {
				i++
			}
			s = s[i:]
		}
		return ellipsis + s
	}
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	return s + ellipsis
}
