// Package backoff computes capped exponential waits between retries, for
// the clients that reconnect (agent sessions, balancer watches) and the
// calls that are retried (scale providers, grpcx.RetryUnavailable).
package backoff

import "time"

// Exponential returns base doubled n times, at most limit: the wait after
// the n-th consecutive failure, counted from 0. It never overflows, and
// returns base for n ≤ 0 and limit when base exceeds it.
func Exponential(base, limit time.Duration, n int) time.Duration {
	d := base
	for i := 0; i < n && d < limit; i++ {
		if d > limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}
