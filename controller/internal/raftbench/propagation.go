package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// runPropagation measures how long a committed table change takes to reach
// watching balancers: n watchers spread over the three controllers each
// acknowledge (AckTable) every table they receive; for each of writes
// changes, the delay from the write's start and from its return to each
// watcher's acknowledgement is recorded.
func runPropagation(watchers, writes int) {
	servers, stop := startControllers(raftnode.StoreWAL)
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var leader *server.Server
	for leader == nil {
		for _, s := range servers {
			if s.IsLeader() {
				leader = s
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	lconn, err := grpcx.Dial(leader.APIAddr())
	if err != nil {
		log.Fatal(err)
	}
	defer lconn.Close()
	pools := pb.NewPoolServiceClient(lconn)
	for {
		if _, err := pools.CreatePool(ctx, &pb.CreatePoolRequest{Pool: &pb.Pool{Name: "web"}}); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	type ackAt struct {
		index uint64
		at    time.Time
	}
	acks := make(chan ackAt, watchers*(writes+2))
	var ready sync.WaitGroup
	for i := range watchers {
		conn, err := grpcx.Dial(servers[i%3].APIAddr())
		if err != nil {
			log.Fatal(err)
		}
		defer conn.Close()
		c := pb.NewBalancerServiceClient(conn)
		name := fmt.Sprintf("edge-%d", i)
		stream, err := c.WatchTable(ctx, &pb.WatchTableRequest{Balancer: name})
		if err != nil {
			log.Fatal(err)
		}
		ready.Add(1)
		go func() {
			first := true
			for {
				r, err := stream.Recv()
				if err != nil {
					return
				}
				if _, err := c.AckTable(ctx, &pb.AckTableRequest{Balancer: name, Version: r.Table.Version}); err != nil {
					return
				}
				acks <- ackAt{r.Table.Version.Index, time.Now()}
				if first {
					ready.Done()
					first = false
				}
			}
		}()
	}
	ready.Wait()

	type write struct{ start, end time.Time }
	done := map[uint64]write{}
	for i := range writes {
		start := time.Now()
		var resp interface{ GetIndex() uint64 }
		var err error
		id := fmt.Sprintf("change-%d", i)
		for attempt := 0; attempt < 100; attempt++ {
			if i%2 == 0 {
				resp, err = pools.AddBackend(ctx, &pb.AddBackendRequest{RequestId: id, Pool: "web", Backend: &pb.Backend{Address: "10.0.0.1:8080"}})
			} else {
				resp, err = pools.RemoveBackend(ctx, &pb.RemoveBackendRequest{RequestId: id, Pool: "web", Address: "10.0.0.1:8080"})
			}
			if status.Code(err) != codes.Unavailable {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			log.Fatal(err)
		}
		done[resp.GetIndex()] = write{start, time.Now()}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	var fromStart, fromEnd []time.Duration
	for {
		select {
		case a := <-acks:
			if w, ok := done[a.index]; ok {
				fromStart = append(fromStart, a.at.Sub(w.start))
				fromEnd = append(fromEnd, a.at.Sub(w.end))
			}
			continue
		default:
		}
		break
	}
	q := func(ds []time.Duration, p float64) time.Duration {
		slices.Sort(ds)
		return ds[int(p*float64(len(ds)-1))].Round(10 * time.Microsecond)
	}
	fmt.Printf("table propagation: %d watchers over 3 controllers, %d changes, %d acknowledgements (want %d)\n",
		watchers, writes, len(fromStart), watchers*writes)
	fmt.Printf("  from the write's start:  p50 %v  p99 %v  max %v\n", q(fromStart, .5), q(fromStart, .99), q(fromStart, 1))
	fmt.Printf("  from the write's return: p50 %v  p99 %v  max %v\n", q(fromEnd, .5), q(fromEnd, .99), q(fromEnd, 1))
}
