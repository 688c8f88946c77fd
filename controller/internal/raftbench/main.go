// Command raftbench measures committed writes per second and their latency
// on a three-node loopback cluster, through the hostscale gRPC API and with
// bare hashicorp/raft Apply on the same log store, side by side in one run.
//
//	go run ./internal/raftbench -duration 10s -clients 1,64 -stores wal,boltdb
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

type result struct {
	store, mode string
	clients     int
	writes      int
	errors      int64
	elapsed     time.Duration
	p50, p99    time.Duration
	mean        time.Duration
	// idle is the writers' measured mean idle time before each write.
	idle time.Duration
	// applyMean is the leader's mean propose-to-apply time (API only).
	applyMean time.Duration
	// stages splits an API write's mean time (API writes only).
	stages *stages
	// raft is Raft's own stages over the measured seconds; perEntry the
	// mean commands per entry (API writes only: bare raft's are 1).
	raft     *raftStages
	perEntry float64
	// path is a write's critical path, with -critpath.
	path *pathStats
	// cpu is the process's CPU time (user and system, every node and
	// client in it) over the measured seconds; cores is that per second.
	cpu time.Duration
}

// cpuPerWrite is the process's CPU time per measured write.
func (r result) cpuPerWrite() time.Duration {
	if r.writes == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.writes)
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (r result) rate() float64 { return float64(r.writes) / r.elapsed.Seconds() }

func main() {
	if os.Getenv(wakePeerEnv) != "" {
		servePeer()
		return
	}
	duration := flag.Duration("duration", 10*time.Second, "measured time per case")
	warmup := flag.Duration("warmup", 2*time.Second, "unmeasured load before each case")
	clientsFlag := flag.String("clients", "1,64", "concurrent writers, comma-separated")
	storesFlag := flag.String("stores", "wal,boltdb", "log stores, comma-separated: wal, boltdb")
	size := flag.Int("size", 100, "payload bytes per bare raft entry")
	idle := flag.Duration("idle", 0, "also run bare raft with each writer idle this long before each Apply, as a client's own time between writes leaves the machine; its latencies are the Applies' alone")
	rounds := flag.Int("rounds", 3, "bare and API cases alternate this many times per store and client count; the summary gives the median ratios")
	reuse := flag.Bool("reuse", false, "start each case's cluster once for all its rounds, not once per round: the rounds' measurements are seconds apart, not a cluster's start, so the disk's drift weighs less on each ratio (with short -duration and many -rounds)")
	conns := flag.Int("conns", 1, "API: client connections to each node, shared by the writers")
	via := flag.String("via", "all", "API clients call: all (spread over the three nodes; two thirds forwarded) or leader")
	modes := flag.String("modes", "bare,api", "what to measure, comma-separated: bare, api, read (GetPool calls: the gRPC path alone), propagation, wake (a loopback round trip, a gRPC call, and a gRPC call to another process, back to back and after idling: what a hop costs on this machine)")
	watchers := flag.Int("watchers", 100, "propagation: watching balancers")
	changes := flag.Int("changes", 200, "propagation: table changes")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	traceFile := flag.String("trace", "", "write an execution trace of one second of the measured API load to this file")
	flag.BoolVar(&critPaths, "critpath", false, "trace one second of each bare raft and API case and report where a write's critical path spends its time: on a CPU, by goroutine, waiting for one, in system calls, in network wake-ups")
	flag.BoolVar(&consistentReads, "consistent", false, "reads mode: consistent reads, which followers forward to the leader and the leader confirms with a quorum")
	memprofile := flag.String("memprofile", "", "write an allocation profile of the whole run to this file")
	flag.Parse()
	traceOut = *traceFile
	if *memprofile != "" {
		runtime.MemProfileRate = 64 << 10
		defer func() {
			f, err := os.Create(*memprofile)
			if err != nil {
				log.Fatal(err)
			}
			defer f.Close()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				log.Fatal(err)
			}
		}()
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	var clients []int
	for _, s := range strings.Split(*clientsFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			log.Fatalf("-clients: %q is not a positive number", s)
		}
		clients = append(clients, n)
	}
	if strings.Contains(*modes, "wake") {
		runWake(os.Stdout, 2000)
	}
	if strings.Contains(*modes, "propagation") {
		runPropagation(*watchers, *changes)
	}
	var results []result
	for _, store := range strings.Split(*storesFlag, ",") {
		store = strings.TrimSpace(store)
		if store != raftnode.StoreWAL && store != raftnode.StoreBoltDB {
			log.Fatalf("-stores: %q is not wal or boltdb", store)
		}
		for _, n := range clients {
			// Each case's cluster: new for every round, or with -reuse
			// one for all of them.
			var bare *bareCluster
			var api, read *apiCluster
			for range max(*rounds, 1) {
				if strings.Contains(*modes, "bare") {
					if bare == nil {
						bare = newBare(store, *size)
					}
					results = append(results, bare.measure(n, 0, *warmup, *duration))
					if *idle > 0 {
						results = append(results, bare.measure(n, *idle, *warmup, *duration))
					}
					if !*reuse {
						bare.close()
						bare = nil
					}
				}
				for _, c := range []struct {
					mode    string
					cluster **apiCluster
				}{{"api", &api}, {"read", &read}} {
					if !strings.Contains(*modes, c.mode) {
						continue
					}
					if *c.cluster == nil {
						*c.cluster = newAPI(store, *via, *conns)
					}
					results = append(results, (*c.cluster).measure(n, *warmup, *duration, c.mode == "read"))
					if !*reuse {
						(*c.cluster).close()
						*c.cluster = nil
					}
				}
			}
			if bare != nil {
				bare.close()
			}
			for _, a := range []*apiCluster{api, read} {
				if a != nil {
					a.close()
				}
			}
		}
	}
	if len(results) > 0 {
		report(os.Stdout, results)
		if *rounds > 1 {
			fmt.Println()
			summarize(os.Stdout, results)
		}
	}
}

// The bare and API cases run one after the other in this process, so a
// profile shows both; run one -clients value to read it.

func report(w io.Writer, rs []result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tclients\tmode\twrites/s\tp50\tp99\terrors\tratio writes/s\tratio p99\tleader apply mean\tCPU µs/write\tcores\t")
	bare := bareBefore(rs)
	for i, r := range rs {
		ratio, ratioP99 := "", ""
		if b := bare[i]; b != nil {
			ratio = fmt.Sprintf("%.2fx", r.rate()/b.rate())
			ratioP99 = fmt.Sprintf("%.2fx", float64(r.p99)/float64(b.p99))
		}
		apply := ""
		if r.applyMean > 0 {
			apply = r.applyMean.Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%.0f\t%v\t%v\t%d\t%s\t%s\t%s\t%s\t%.2f\t\n", r.store, r.clients, r.mode, r.rate(),
			r.p50.Round(10*time.Microsecond), r.p99.Round(10*time.Microsecond), r.errors, ratio, ratioP99, apply,
			usText(r.cpuPerWrite()), r.cpu.Seconds()/r.elapsed.Seconds())
	}
	tw.Flush()
	reportStages(w, rs, bare)
	reportRaftStages(w, rs)
	reportPaths(w, rs)
}

// reportStages prints where the API writes' time went, beside the mean
// bare raft Apply of the round before, back to back and, with -idle, after
// its writers' idle time.
func reportStages(w io.Writer, rs []result, bare []*result) {
	var tw *tabwriter.Writer
	var idleBare *result
	for i := range rs {
		r := &rs[i]
		if strings.HasPrefix(r.mode, "bare raft, idle") {
			idleBare = r
		}
		st := r.stages
		if st == nil {
			continue
		}
		if tw == nil {
			fmt.Fprintln(w, "\nWhere an API write's time goes, mean µs per write (forwarding: per forwarded call in brackets):")
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "store\tclients\tmode\tclient call\tgRPC client<->server\tforwarding\tforwarded\thandlers\tRaft propose->apply\tbare raft Apply\tbare raft Apply after idle (idle)\t")
		}
		bareMean, idleMean := "", ""
		if b := bare[i]; b != nil {
			bareMean = usText(b.mean)
		}
		if b := idleBare; b != nil && b.store == r.store && b.clients == r.clients {
			idleMean = fmt.Sprintf("%s (%s)", usText(b.mean), usText(b.idle))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s (%s)\t%.0f%%\t%s\t%s\t%s\t%s\t\n", r.store, r.clients, r.mode, usText(r.mean),
			usText(st.grpc), usText(st.forwarding), usText(st.perForward), 100*st.forwardedShare, usText(st.handlers), usText(st.raft), bareMean, idleMean)
	}
	if tw != nil {
		tw.Flush()
	}
}

// usText is d in whole microseconds, as the tables print times.
func usText(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Microsecond)) }

// bareBefore returns, for each API result, the bare raft result of the
// same store and client count run last before it (nil for bare results,
// idle ones included, and when there is none).
func bareBefore(rs []result) []*result {
	out := make([]*result, len(rs))
	last := map[string]*result{}
	for i := range rs {
		key := fmt.Sprintf("%s/%d", rs[i].store, rs[i].clients)
		switch {
		case rs[i].mode == "bare raft":
			last[key] = &rs[i]
		case !strings.HasPrefix(rs[i].mode, "bare raft"):
			out[i] = last[key]
		}
	}
	return out
}

// summarize prints, for each store, client count and mode, the median of
// the rounds' writes/s and p99 and of their ratios to the bare raft round
// run just before.
func summarize(w io.Writer, rs []result) {
	type key struct {
		store, mode string
		clients     int
	}
	var keys []key
	rates, p99s, ratios, ratiosP99, cpus := map[key][]float64{}, map[key][]float64{}, map[key][]float64{}, map[key][]float64{}, map[key][]float64{}
	bare := bareBefore(rs)
	for i, r := range rs {
		k := key{r.store, r.mode, r.clients}
		if _, ok := rates[k]; !ok {
			keys = append(keys, k)
		}
		rates[k] = append(rates[k], r.rate())
		p99s[k] = append(p99s[k], float64(r.p99))
		cpus[k] = append(cpus[k], float64(r.cpuPerWrite()))
		if b := bare[i]; b != nil {
			ratios[k] = append(ratios[k], r.rate()/b.rate())
			ratiosP99[k] = append(ratiosP99[k], float64(r.p99)/float64(b.p99))
		}
	}
	median := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		v = slices.Clone(v)
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "store\tclients\tmode\trounds\tmedian writes/s\tmedian p99\tmedian CPU µs/write\tmedian ratio writes/s\tmedian ratio p99\tratios writes/s\t")
	for _, k := range keys {
		ratio, ratioP99, all := "", "", ""
		if len(ratios[k]) > 0 {
			ratio = fmt.Sprintf("%.2fx", median(ratios[k]))
			ratioP99 = fmt.Sprintf("%.2fx", median(ratiosP99[k]))
			var each []string
			for _, x := range ratios[k] {
				each = append(each, fmt.Sprintf("%.2f", x))
			}
			all = strings.Join(each, " ")
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%.0f\t%v\t%s\t%s\t%s\t%s\t\n", k.store, k.clients, k.mode, len(rates[k]), median(rates[k]),
			time.Duration(median(p99s[k])).Round(10*time.Microsecond), usText(time.Duration(median(cpus[k]))), ratio, ratioP99, all)
	}
	tw.Flush()
}

// load runs n writers calling write until warmup+d has passed and returns
// the figures of the last d. mark, when set, runs as the measured time
// starts.
func load(n int, warmup, d time.Duration, tracePath string, mark func(), write func(worker, seq int) error) result {
	return loadIdle(n, 0, warmup, d, tracePath, mark, write)
}

// loadIdle is load with each writer idle for idle before each write; the
// latencies are the writes' alone.
func loadIdle(n int, idle, warmup, d time.Duration, tracePath string, mark func(), write func(worker, seq int) error) result {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		errs      atomic.Int64
		mu        sync.Mutex
		lat       []time.Duration
		idled     atomic.Int64
		idles     atomic.Int64
		wg        sync.WaitGroup
	)
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for seq := 0; !stop.Load(); seq++ {
				if idle > 0 {
					s := time.Now()
					time.Sleep(idle)
					if measuring.Load() {
						idled.Add(int64(time.Since(s)))
						idles.Add(1)
					}
				}
				start := time.Now()
				region := trace.StartRegion(context.Background(), writeRegion)
				err := write(w, seq)
				region.End()
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	time.Sleep(warmup)
	if mark != nil {
		mark()
	}
	resetRaftStages()
	measuring.Store(true)
	start := time.Now()
	cpuStart := processCPU()
	if tracePath != "" {
		f, err := os.Create(tracePath)
		if err != nil {
			log.Fatal(err)
		}
		if err := trace.Start(f); err != nil {
			log.Fatal(err)
		}
		time.Sleep(time.Second)
		trace.Stop()
		f.Close()
	}
	time.Sleep(d - time.Since(start))
	stop.Store(true)
	elapsed := time.Since(start)
	cpu := processCPU() - cpuStart
	wg.Wait()
	slices.Sort(lat)
	q := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(p*float64(len(lat)-1))]
	}
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	mean := time.Duration(0)
	if len(lat) > 0 {
		mean = sum / time.Duration(len(lat))
	}
	r := result{clients: n, writes: len(lat), errors: errs.Load(), elapsed: elapsed, p50: q(0.50), p99: q(0.99), mean: mean, raft: readRaftStages(), cpu: cpu}
	if idles.Load() > 0 {
		r.idle = time.Duration(idled.Load() / idles.Load())
	}
	return r
}

// traceOut is -trace: runAPI traces its load. critPaths is -critpath.
// consistentReads is -consistent: the reads mode's calls ask to be
// consistent.
var (
	traceOut        string
	critPaths       bool
	consistentReads bool
)

// tracePath is where a case traces its load: traceTo, or with -critpath
// and no traceTo a file in a new temporary directory, which remove
// deletes.
func tracePath(traceTo string) (path string, remove func()) {
	if traceTo != "" || !critPaths {
		return traceTo, func() {}
	}
	dir := tempDir()
	return filepath.Join(dir, "load.trace"), func() { os.RemoveAll(dir) }
}

// addPath sets r's critical path from the trace in file, with -critpath.
func addPath(r *result, file string) {
	if !critPaths {
		return
	}
	p, err := criticalPathFile(file)
	if err != nil {
		log.Fatalf("critical path of %s: %v", file, err)
	}
	r.path = p
}

type nopFSM struct{ applied atomic.Uint64 }

func (f *nopFSM) Apply(*raft.Log) any                 { f.applied.Add(1); return nil }
func (f *nopFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnap{}, nil }
func (f *nopFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type nopSnap struct{}

func (nopSnap) Persist(s raft.SnapshotSink) error { return s.Close() }
func (nopSnap) Release()                          {}

func listen() net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	return l
}

func tempDir() string {
	d, err := os.MkdirTemp("", "raftbench")
	if err != nil {
		log.Fatal(err)
	}
	return d
}

// bareCluster is three nodes built by the controller's own raftnode
// package: same stores, cache, transport and timings, with a state machine
// that does nothing.
type bareCluster struct {
	store   string
	dir     string
	nodes   []*raftnode.Node
	leader  *raftnode.Node
	payload []byte
}

// newBare starts a bare cluster on store whose entries hold size bytes,
// and waits for its leader.
func newBare(store string, size int) *bareCluster {
	b := &bareCluster{store: store, dir: tempDir(), payload: make([]byte, size)}
	var lis []net.Listener
	var peers []raftnode.Peer
	for i := range 3 {
		l := listen()
		lis = append(lis, l)
		peers = append(peers, raftnode.Peer{ID: fmt.Sprintf("n%d", i), Address: l.Addr().String()})
	}
	for i := range 3 {
		cfg := raftnode.DefaultConfig()
		cfg.ID, cfg.DataDir, cfg.Listener, cfg.Peers, cfg.LogStore = peers[i].ID, filepath.Join(b.dir, peers[i].ID), lis[i], peers, store
		n, err := raftnode.New(cfg, &nopFSM{})
		if err != nil {
			log.Fatal(err)
		}
		b.nodes = append(b.nodes, n)
	}
	for b.leader == nil {
		for _, n := range b.nodes {
			if n.State() == raft.Leader {
				b.leader = n
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return b
}

func (b *bareCluster) close() {
	for _, n := range b.nodes {
		n.Close()
	}
	os.RemoveAll(b.dir)
}

// measure runs clients writers calling raft.Apply on the leader, each idle
// for idle before each write.
func (b *bareCluster) measure(clients int, idle, warmup, d time.Duration) result {
	traced, remove := tracePath("")
	defer remove()
	r := loadIdle(clients, idle, warmup, d, traced, nil, func(_, _ int) error {
		return b.leader.Apply(b.payload, 10*time.Second).Error()
	})
	addPath(&r, traced)
	r.store, r.mode = b.store, "bare raft"
	if idle > 0 {
		// Named by the flag, so that the rounds' summary groups them; the
		// idle time measured is in the stages table.
		r.mode = fmt.Sprintf("bare raft, idle %v", idle)
	}
	return r
}

// apiCluster is three controllers in this process and the clients'
// connections to them.
type apiCluster struct {
	store, via string
	servers    []*server.Server
	stop       func()
	conns      []*grpc.ClientConn
	// targets are the connections the writers call, round the nodes.
	targets []*grpc.ClientConn
	// seqs holds each writer's next call across measurements, so that a
	// writer whose last call created its pool deletes it next.
	seqs []int
}

// newAPI starts three controllers on store, perNode client connections to
// each, and waits until every node knows the leader and the leader is
// ready. With via "leader" the writers call the leader alone.
func newAPI(store, via string, perNode int) *apiCluster {
	a := &apiCluster{store: store, via: via}
	a.servers, a.stop = startControllers(store)
	ctx := context.Background()
	// conns[i] holds perNode connections to servers[i].
	var conns [][]*grpc.ClientConn
	for _, s := range a.servers {
		var cs []*grpc.ClientConn
		for range perNode {
			c, err := grpcx.Dial(s.APIAddr())
			if err != nil {
				log.Fatal(err)
			}
			a.conns = append(a.conns, c)
			cs = append(cs, c)
		}
		conns = append(conns, cs)
	}
	for {
		ready := 0
		for _, cs := range conns {
			st, err := pb.NewClusterServiceClient(cs[0]).GetStatus(ctx, &pb.GetStatusRequest{})
			if err == nil && st.Leader.GetApiAddress() != "" {
				ready++
			}
		}
		leaderReady := false
		for _, s := range a.servers {
			leaderReady = leaderReady || s.IsLeader()
		}
		if ready == len(conns) && leaderReady {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i, s := range a.servers {
		if via != "leader" || s.IsLeader() {
			a.targets = append(a.targets, conns[i]...)
		}
	}
	return a
}

func (a *apiCluster) close() {
	for _, c := range a.conns {
		c.Close()
	}
	a.stop()
}

// measure runs clients writers calling CreatePool and DeletePool in turn
// through gRPC; each writer creates and deletes its own pool, so every
// call is a committed write and the state stays small.
//
// With reads set it measures GetPool calls instead: the cost of the gRPC
// path alone, for comparison.
func (a *apiCluster) measure(clients int, warmup, d time.Duration, reads bool) result {
	ctx := context.Background()
	// Each writer builds its requests once, as a client would reuse them.
	type writer struct {
		create *pb.CreatePoolRequest
		del    *pb.DeletePoolRequest
	}
	writers := make([]writer, clients)
	for w := range writers {
		name := fmt.Sprintf("bench-%d", w)
		writers[w] = writer{
			create: &pb.CreatePoolRequest{Pool: &pb.Pool{
				Name: name, PathPrefix: "/" + name,
				Backends: []*pb.Backend{{Address: "10.0.0.1:8080"}},
			}},
			del: &pb.DeletePoolRequest{Pool: name},
		}
	}
	for len(a.seqs) < clients {
		a.seqs = append(a.seqs, 0)
	}
	var pools []pb.PoolServiceClient
	for _, t := range a.targets {
		pools = append(pools, pb.NewPoolServiceClient(t))
	}
	get := &pb.GetPoolRequest{Pool: "bench-0", Consistent: consistentReads}
	servers := a.servers
	before := make([]map[string]float64, len(servers))
	mark := func() {
		for i, s := range servers {
			before[i] = scrape(s.HTTPAddr())
		}
	}
	traced, remove := tracePath(traceOut)
	defer remove()
	r := load(clients, warmup, d, traced, mark, func(w, _ int) error {
		// Each writer's calls go round the connections, and so the nodes:
		// with -via all, two thirds of them are forwarded, one writer's too.
		seq := a.seqs[w]
		a.seqs[w]++
		wr, c := writers[w], pools[(w+seq)%len(pools)]
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		switch {
		case reads:
			_, err = c.GetPool(cctx, get)
			if status.Code(err) == codes.NotFound {
				err = nil
			}
		case seq%2 == 0:
			_, err = c.CreatePool(cctx, wr.create)
		default:
			_, err = c.DeletePool(cctx, wr.del)
		}
		return err
	})
	r.store, r.mode = a.store, "API via "+a.via
	addPath(&r, traced)

	if reads {
		r.mode = "reads via " + a.via
	}
	var deltas []map[string]float64
	leader := -1
	for i, s := range servers {
		deltas = append(deltas, delta(scrape(s.HTTPAddr()), before[i]))
		if s.IsLeader() {
			leader = i
		}
	}
	if leader >= 0 {
		r.applyMean = meanOf(deltas[leader], "hostscale_controller_apply_seconds", `{result="ok"}`)
		r.perEntry = mean(totals(deltas[leader], "hostscale_controller_entry_commands", ""))
		if !reads {
			r.stages = split(deltas, leader, r.mean)
		}
	}
	return r
}

// stages split an API write's mean time, as the client saw it, by where it
// went: every part is a mean over all writes, forwarded or not.
type stages struct {
	// grpc is the client's call less the handling on the node it called:
	// the client library, HTTP/2 on both ends and loopback.
	grpc time.Duration
	// forwarding is the hop from follower to leader and back, less the
	// leader's share; perForward is the same per forwarded call.
	forwarding, perForward time.Duration
	forwardedShare         float64
	// handlers is the handlers' own work on both nodes, less Raft and the
	// forwarding hop.
	handlers time.Duration
	// raft is the time from proposing a command to its application on
	// the leader, waiting for other entries included.
	raft time.Duration
}

// writeLabels are the label sets of the gRPC methods the API writes call.
var writeLabels = []string{
	`{grpc_method="/hostscale.v1.PoolService/CreatePool"}`,
	`{grpc_method="/hostscale.v1.PoolService/DeletePool"}`,
}

// forwardLabels are the label sets of the followers' forward waits.
var forwardLabels = []string{`{transport="raft"}`, `{transport="api"}`}

// split works out an API run's stages from the metrics each node gathered
// in the measured time (deltas, the leader's at index leader) and the
// client's mean call.
func split(deltas []map[string]float64, leader int, client time.Duration) *stages {
	const (
		handling = "grpc_server_handling_seconds"
		waiting  = "hostscale_controller_forward_wait_seconds"
	)
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	leaderSum, leaderCount := totals(deltas[leader], handling, writeLabels...)
	var followerSum, followerCount, waitSum, waitCount float64
	for i, m := range deltas {
		if i == leader {
			continue
		}
		s, c := totals(m, handling, writeLabels...)
		followerSum, followerCount = followerSum+s, followerCount+c
		s, c = totals(m, waiting, forwardLabels...)
		waitSum, waitCount = waitSum+s, waitCount+c
	}
	calls := leaderCount + followerCount
	if calls == 0 {
		return nil
	}
	apply := mean(totals(deltas[leader], "hostscale_controller_apply_seconds", `{result="ok"}`))
	serve := mean(totals(deltas[leader], "hostscale_controller_forward_serve_seconds", ""))
	wait := mean(waitSum, waitCount)
	direct, viaFollower := mean(leaderSum, leaderCount), mean(followerSum, followerCount)
	share := followerCount / calls
	st := &stages{
		raft:           sec(apply),
		forwardedShare: share,
		perForward:     sec(wait - serve),
		forwarding:     sec(share * (wait - serve)),
		handlers:       sec((1-share)*(direct-apply) + share*((serve-apply)+(viaFollower-wait))),
	}
	st.grpc = client - sec((1-share)*direct+share*viaFollower)
	return st
}

// totals returns the sum and count of the histogram name in m over the
// given label sets ("" for a histogram without labels).
func totals(m map[string]float64, name string, labels ...string) (sum, count float64) {
	for _, l := range labels {
		sum += m[name+"_sum"+l]
		count += m[name+"_count"+l]
	}
	return sum, count
}

// mean is sum/count, 0 without a count.
func mean(sum, count float64) float64 {
	if count == 0 {
		return 0
	}
	return sum / count
}

// scrape reads every sample of a node's /metrics, keyed by name and labels
// as printed.
func scrape(httpAddr string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func delta(after, before map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		out[k] = v - before[k]
	}
	return out
}

// meanOf returns the mean of histogram name's series with labels in m.
func meanOf(m map[string]float64, name, labels string) time.Duration {
	return time.Duration(mean(totals(m, name, labels)) * float64(time.Second))
}

// startControllers starts three controllers in this process, bootstrapped
// as one cluster with the given log store, and returns them with the
// function that stops them and removes their data.
func startControllers(store string) ([]*server.Server, func()) {
	dir := tempDir()
	var cfgs []server.Config
	var peers []raftnode.Peer
	for i := range 3 {
		cfg := server.DefaultConfig()
		cfg.ID, cfg.DataDir = fmt.Sprintf("c%d", i), filepath.Join(dir, fmt.Sprintf("c%d", i))
		cfg.GRPCListener, cfg.RaftListener, cfg.HTTPListener = listen(), listen(), listen()
		cfg.Raft.LogStore = store
		peers = append(peers, raftnode.Peer{ID: cfg.ID, Address: cfg.RaftListener.Addr().String()})
		cfgs = append(cfgs, cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var servers []*server.Server
	for _, cfg := range cfgs {
		cfg.Peers = peers
		s, err := server.New(cfg)
		if err != nil {
			log.Fatal(err)
		}
		servers = append(servers, s)
		wg.Add(1)
		go func() { defer wg.Done(); _ = s.Run(ctx) }()
	}
	return servers, func() {
		cancel()
		wg.Wait()
		os.RemoveAll(dir)
	}
}
