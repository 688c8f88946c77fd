package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// load sends requests at a steady rate per step and prints, each second,
// what was sent, what failed, the latency and which instances answered,
// with the pool's instance count.
func (c *cli) load(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	url := fs.String("url", "http://127.0.0.1:8080/", "where to send GET requests (the balancer)")
	ratesFlag := fs.String("rates", "20,100,200,100,0", "requests per second of each step, comma-separated")
	step := fs.Duration("step", 30*time.Second, "how long each step lasts")
	pool := fs.String("pool", "demo", "the pool whose instances are counted")
	if err := fs.Parse(args); err != nil {
		return usageError("load: " + err.Error())
	}
	var rates []int
	for _, r := range strings.Split(*ratesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(r))
		if err != nil || n < 0 || n > 100000 {
			return usageError(fmt.Sprintf("load: -rates: %q is not a rate from 0 to 100000", r))
		}
		rates = append(rates, n)
	}
	if *step < time.Second {
		return usageError("load: -step: at least 1s")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 512}}
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	by := map[string]int{}
	one := func() {
		start := time.Now()
		resp, err := client.Get(*url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = errors.New(resp.Status)
			}
		}
		if err != nil {
			failed.Add(1)
			return
		}
		ok.Add(1)
		mu.Lock()
		lat = append(lat, time.Since(start))
		by[resp.Header.Get("X-Instance")]++
		mu.Unlock()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, 1024)
	fmt.Fprintf(c.out, "%-8s %6s %6s %6s %8s %9s  %s\n", "TIME", "RATE", "OK", "FAILED", "P95", "INSTANCES", "ANSWERED BY")
	for _, rate := range rates {
		end := time.Now().Add(*step)
		var tick <-chan time.Time
		if rate > 0 {
			t := time.NewTicker(time.Second / time.Duration(rate))
			defer t.Stop()
			tick = t.C
		}
		report := time.NewTicker(time.Second)
		for time.Now().Before(end) {
			select {
			case <-ctx.Done():
				report.Stop()
				return nil
			case <-tick:
				select {
				case sem <- struct{}{}:
					wg.Go(func() { defer func() { <-sem }(); one() })
				default:
					failed.Add(1)
				}
			case <-report.C:
				mu.Lock()
				l, b := lat, by
				lat, by = nil, map[string]int{}
				mu.Unlock()
				p95 := "-"
				if len(l) > 0 {
					slices.Sort(l)
					p95 = l[len(l)*95/100].Round(100 * time.Microsecond).String()
				}
				n := "-"
				if r, err := c.pools.ListInstances(ctx, &pb.ListInstancesRequest{Pool: *pool}); err == nil {
					n = strconv.Itoa(len(r.Instances))
				}
				var names []string
				for k, v := range b {
					names = append(names, fmt.Sprintf("%s:%d", k, v))
				}
				slices.Sort(names)
				fmt.Fprintf(c.out, "%-8s %6d %6d %6d %8s %9s  %s\n", time.Now().Format("15:04:05"), rate, ok.Swap(0), failed.Swap(0), p95, n, strings.Join(names, " "))
			}
		}
		report.Stop()
	}
	return nil
}
