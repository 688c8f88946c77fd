package backoff

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestExponential(t *testing.T) {
	for _, c := range []struct {
		base, limit time.Duration
		n           int
		want        time.Duration
	}{
		{time.Second, time.Minute, -1, time.Second},
		{time.Second, time.Minute, 0, time.Second},
		{time.Second, time.Minute, 1, 2 * time.Second},
		{time.Second, time.Minute, 5, 32 * time.Second},
		{time.Second, time.Minute, 6, time.Minute},
		{time.Second, time.Minute, math.MaxInt, time.Minute},
		{time.Minute, time.Second, 0, time.Second},
		{time.Duration(math.MaxInt64 / 3), time.Duration(math.MaxInt64), 10, time.Duration(math.MaxInt64)},
	} {
		require.Equal(t, c.want, Exponential(c.base, c.limit, c.n), "base %v limit %v n %d", c.base, c.limit, c.n)
	}
}
