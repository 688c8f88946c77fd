package main

import (
	"context"
	"crypto/sha256"
	"time"
)

// burnCPU keeps the calling goroutine busy, hashing, until d of wall time
// has passed or ctx is done. It does real work rather than sleeping so
// that the process shows CPU use to the agent's sampler: one call costs
// about d of one core.
func burnCPU(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	start := time.Now()
	var sum [sha256.Size]byte
	for time.Since(start) < d {
		// Look at the clock and ctx every few hundred hashes, not every
		// hash: often enough to overshoot by microseconds, rarely enough
		// that the loop is mostly hashing.
		for range 256 {
			sum = sha256.Sum256(sum[:])
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// sleepCtx waits for d or until ctx is done, whichever comes first, and
// reports whether the whole of d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
