package provider

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestBackoff_doublesFromOneSecondCappedAtOneMinute(t *testing.T) {
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{-1, time.Second},
		{0, time.Second},
		{1, time.Second},
		{2, 2 * time.Second},
		{3, 4 * time.Second},
		{4, 8 * time.Second},
		{6, 32 * time.Second},
		{7, time.Minute},
		{31, time.Minute},
		{1000, time.Minute},
	} {
		require.Equal(t, tc.want, Backoff(tc.attempt), "attempt %d", tc.attempt)
	}
	require.Equal(t, 5, MaxAttempts)
}

func TestCall_noProviderIsAnError(t *testing.T) {
	now := time.Unix(1700000000, 0).UTC()
	for _, p := range []*pb.ScaleProvider{nil, {}} {
		r := Call(t.Context(), p, &pb.ScaleEvent{Id: "web-1"}, now)
		require.False(t, r.Ok)
		require.NotEmpty(t, r.Error)
		require.Equal(t, now, r.Time.AsTime())
	}
}

func TestTimeout_defaultsAndBounds(t *testing.T) {
	require.Equal(t, 30*time.Second, timeout(nil, DefaultExecTimeout, MaxExecTimeout))
	require.Equal(t, 30*time.Second, timeout(durationpb.New(0), DefaultExecTimeout, MaxExecTimeout))
	require.Equal(t, 30*time.Second, timeout(durationpb.New(-time.Second), DefaultExecTimeout, MaxExecTimeout))
	require.Equal(t, 5*time.Second, timeout(durationpb.New(5*time.Second), DefaultExecTimeout, MaxExecTimeout))
	require.Equal(t, time.Minute, timeout(durationpb.New(time.Hour), DefaultWebhookTimeout, MaxWebhookTimeout))
}

func TestClip_boundsOnRuneBoundariesWithMark(t *testing.T) {
	short := []byte("hello")
	require.Equal(t, "hello", clip(short, true, false))
	require.Equal(t, "…hello", clip(short, true, true))
	require.Equal(t, "hello…", clip(short, false, true))

	// Multi-byte runes across the cut, both ends.
	long := []byte(strings.Repeat("é", MaxOutput)) // 2 bytes each
	for _, tail := range []bool{true, false} {
		s := clip(long, tail, false)
		require.LessOrEqual(t, len(s), MaxOutput)
		require.True(t, utf8.ValidString(s))
		require.Equal(t, strings.Repeat("é", utf8.RuneCountInString(s)-1), strings.Trim(s, "…"))
	}

	bad := []byte{'a', 0xff, 0xfe, 'b'}
	require.Equal(t, "a\uFFFDb", clip(bad, true, false))
}
