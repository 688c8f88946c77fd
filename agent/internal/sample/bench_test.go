package sample

import (
	"context"
	"testing"
	"time"
)

// BenchmarkHost_Sample measures what one real sample costs. At a 1 s
// interval the agent spends ns/op / 1e9 of one core on sampling.
func BenchmarkHost_Sample(b *testing.B) {
	h, err := New(DefaultConfig())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		if _, err := h.Sample(ctx); err != nil {
			b.Fatal(err)
		}
	}
	perOp := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(float64(perOp)/float64(time.Second)*100, "%core@1s")
}
