package watch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/balancer"
	"github.com/hostscale/hostscale/internal/backoff"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/hostport"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Target is what a Watcher keeps up to date: a *balancer.Balancer.
type Target interface {
	// Apply puts t in force, or refuses it with an error wrapping
	// balancer.ErrInvalidTable or balancer.ErrStaleVersion; an error
	// wrapping balancer.ErrPersist means t is in force all the same.
	Apply(t *balancer.Table) error
	// Table returns the table in force, or nil.
	Table() *balancer.Table
	// Stats returns the cumulative counters of every backend of the table
	// in force, with LatencyCounts per balancer.LatencyBuckets. The Watcher
	// does not retain the slice.
	Stats() []balancer.BackendStats
	// PoolStats returns the counters of every pool of the table in force,
	// with or without backends. The Watcher does not retain the slice.
	PoolStats() []balancer.PoolStats
	// Held is signalled when a request starts waiting for a backend; the
	// Watcher then reports at once rather than at the next tick.
	Held() <-chan struct{}
}

var _ Target = (*balancer.Balancer)(nil)

// maxAckError is the longest refusal reason a controller accepts.
const maxAckError = 4096

// MinStatsInterval is the shortest Config.StatsInterval: a controller takes
// a report from every balancer, and its autoscaler looks at rates over
// seconds.
const MinStatsInterval = 100 * time.Millisecond

// PromptReportGap is the least time between a stats report and the next one
// sent early because a request is held for a backend: a burst of requests
// to a pool scaled to zero costs the controller a report or two, not one
// per request.
const PromptReportGap = 50 * time.Millisecond

// Config configures a Watcher.
type Config struct {
	// Controllers are the controllers' gRPC addresses (host:port), tried in
	// turn. Any of them serves the table, leader or follower.
	Controllers []string
	// Name is the balancer's name in acknowledgements and controller logs:
	// a DNS label.
	Name string
	// Balancer receives the tables.
	Balancer Target
	// Logger receives connection and table events; nil discards them.
	Logger *slog.Logger
	// BackoffMin and BackoffMax bound the wait before the next attempt after
	// a failed one: the n-th failure in a row waits a random time between
	// half of and all of min(BackoffMax, BackoffMin·2ⁿ). A stream that
	// delivered a table, or stayed open for BackoffMax, resets the count.
	BackoffMin, BackoffMax time.Duration
	// ConnectTimeout bounds opening a connection and a stream to one
	// controller.
	ConnectTimeout time.Duration
	// AckTimeout bounds each AckTable and ReportStats call.
	AckTimeout time.Duration
	// AckInterval is how often the version in force is acknowledged again
	// while a stream is open, so that a new controller leader soon knows
	// every balancer that is watching (it waits for their acknowledgements
	// before it stops a removed instance).
	AckInterval time.Duration
	// StatsInterval is how often the balancer's per-backend and per-pool
	// counters (Target.Stats, Target.PoolStats) are sent with ReportStats
	// while a stream is open, on the stream's connection; 0 sends none,
	// otherwise it is at least MinStatsInterval. A request held for a
	// backend (Target.Held) is reported at once instead, at most one such
	// report per PromptReportGap. A failed report is never retried: the
	// counters are cumulative, so the next one carries everything a lost
	// one did. Ticks that come while a report is in flight are dropped.
	StatsInterval time.Duration
	// Dial opens a client connection to a controller; nil means
	// grpcx.Dial. Each attempt gets its own connection, closed when the
	// attempt ends.
	Dial func(addr string) (*grpc.ClientConn, error)
}

// DefaultConfig returns the defaults; Controllers, Name and Balancer must
// still be set.
func DefaultConfig() Config {
	return Config{
		BackoffMin:     100 * time.Millisecond,
		BackoffMax:     5 * time.Second,
		ConnectTimeout: 5 * time.Second,
		AckTimeout:     5 * time.Second,
		AckInterval:    5 * time.Second,
		StatsInterval:  time.Second,
	}
}

// Validate reports the first field that makes the config unusable.
func (c *Config) Validate() error {
	switch {
	case len(c.Controllers) == 0:
		return errors.New("watch: Controllers must list at least one address")
	case !ValidName(c.Name):
		return fmt.Errorf("watch: Name %q is not a DNS label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters)", c.Name)
	case c.Balancer == nil:
		return errors.New("watch: Balancer must be set")
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return errors.New("watch: need 0 < BackoffMin <= BackoffMax")
	case c.ConnectTimeout <= 0 || c.AckTimeout <= 0 || c.AckInterval <= 0:
		return errors.New("watch: ConnectTimeout, AckTimeout and AckInterval must be positive")
	case c.StatsInterval < 0 || (c.StatsInterval > 0 && c.StatsInterval < MinStatsInterval):
		return fmt.Errorf("watch: StatsInterval %v must be 0 (no reports) or at least %v", c.StatsInterval, MinStatsInterval)
	}
	for _, a := range c.Controllers {
		if err := hostport.Check(a); err != nil {
			return fmt.Errorf("watch: controller %w", err)
		}
	}
	return nil
}

// Watcher feeds a balancer the tables of the controller cluster. Status and
// the prometheus.Collector methods are safe for concurrent use; Run is
// called once.
type Watcher struct {
	cfg Config
	log *slog.Logger
	// jitter returns a random int64 in [0, n); tests replace it.
	jitter func(n int64) int64
	// bounds are balancer.LatencyBuckets in seconds, sent with every
	// report; read-only.
	bounds []float64

	mu sync.Mutex
	st Status
	// lastController is the address of the last stream opened, for Leave.
	lastController string
	// started is when the Watcher was made, before its balancer served a
	// request: the start of the counters it reports.
	started *timestamppb.Timestamp
}

// report builds a stats report of the balancer's counters now.
func (w *Watcher) report() *pb.ReportStatsRequest {
	req := statsToProto(w.cfg.Name, w.bounds, w.cfg.Balancer.Stats(), w.cfg.Balancer.PoolStats(), time.Now())
	req.Started = w.started
	return req
}

// Status is a Watcher's view of its controllers.
type Status struct {
	// Controller is the address of the controller whose stream is open, or
	// "" while none is.
	Controller string
	// ControllerID is the id of the controller that sent the last table.
	ControllerID string
	// Streams counts watch streams opened; Failures counts attempts that
	// ended in an error (connecting or a broken stream).
	Streams, Failures uint64
	// Applied, Stale and Refused count the tables received: put in force (or
	// already in force), older than the table in force and so skipped, or
	// refused as invalid.
	Applied, Stale, Refused uint64
	// AckFailures counts AckTable calls that failed.
	AckFailures uint64
	// StatsReports counts ReportStats calls, leaving out those cut short
	// by the end of their stream; StatsFailures counts those of them that
	// failed, an older controller's UNIMPLEMENTED included.
	StatsReports, StatsFailures uint64
	// LastError is the last failure, refusal or failed acknowledgement
	// (not a failed stats report: the next tick sends another).
	LastError string
}

// New returns a Watcher ready to Run.
func New(cfg Config) (*Watcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Dial == nil {
		cfg.Dial = func(addr string) (*grpc.ClientConn, error) { return grpcx.Dial(addr) }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg.Controllers = append([]string(nil), cfg.Controllers...)
	return &Watcher{
		cfg:     cfg,
		log:     log.With("component", "watch", "balancer", cfg.Name),
		jitter:  rand.Int64N,
		bounds:  bucketBounds(balancer.LatencyBuckets),
		started: timestamppb.Now(),
	}, nil
}

// Status returns a copy of the watcher's counters and connection.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

func (w *Watcher) update(f func(*Status)) {
	w.mu.Lock()
	f(&w.st)
	w.mu.Unlock()
}

// Run watches the controllers until ctx is cancelled, then returns nil. It
// holds one stream at a time; after each failure it waits a back-off and
// tries the next controller. It never removes the table in force.
func (w *Watcher) Run(ctx context.Context) error {
	n := len(w.cfg.Controllers)
	idx, failures := 0, 0
	w.log.Info("watching controllers", "controllers", strings.Join(w.cfg.Controllers, ","))
	for {
		addr := w.cfg.Controllers[idx]
		r := w.attempt(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		if r.healthy {
			failures = 0
		}
		w.update(func(s *Status) {
			s.Failures++
			s.LastError = fmt.Sprintf("%s: %v", addr, r.err)
		})
		w.logEnd(addr, r, failures)
		failures++
		if failures == n || failures%(10*n) == 0 {
			have := "none"
			if t := w.cfg.Balancer.Table(); t != nil {
				have = t.Version.String()
			}
			w.log.Warn("no controller answers; the table in force stays", "attempts", failures, "version", have)
		}
		idx = (idx + 1) % n
		t := time.NewTimer(w.backoff(failures - 1))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// backoff returns the wait after the n-th consecutive failure (from 0).
func (w *Watcher) backoff(n int) time.Duration {
	d := backoff.Exponential(w.cfg.BackoffMin, w.cfg.BackoffMax, n)
	half := d / 2
	return half + time.Duration(w.jitter(int64(d-half)+1))
}

func (w *Watcher) logEnd(addr string, r result, failures int) {
	code := status.Code(r.err)
	switch code {
	case codes.InvalidArgument, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated:
		w.log.Error("controller refused the watch", "controller", addr, "code", code.String(), "err", r.err)
		return
	}
	lvl := slog.LevelDebug
	if failures == 0 {
		lvl = slog.LevelWarn
	}
	w.log.Log(context.Background(), lvl, "controller watch ended", "controller", addr, "code", code.String(), "err", r.err)
}

// result is how one attempt ended.
type result struct {
	// healthy: the stream delivered a table or stayed open for BackoffMax.
	healthy bool
	err     error
}

// errLeft is the cause given to a stream whose connection stopped being
// ready: the controller is draining (GOAWAY) or the transport broke.
var errLeft = errors.New("connection to the controller is no longer ready")

// attempt opens a connection and a watch stream to addr and applies what
// arrives until the stream fails or ctx is cancelled.
func (w *Watcher) attempt(ctx context.Context, addr string) result {
	conn, err := w.cfg.Dial(addr)
	if err != nil {
		return result{err: err}
	}
	defer conn.Close()
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	req := &pb.WatchTableRequest{Balancer: w.cfg.Name}
	have := w.cfg.Balancer.Table()
	if have != nil {
		req.Have = versionToProto(have.Version)
	}
	timer := time.AfterFunc(w.cfg.ConnectTimeout, func() {
		cancel(fmt.Errorf("no stream within %s", w.cfg.ConnectTimeout))
	})
	client := pb.NewBalancerServiceClient(conn)
	stream, err := client.WatchTable(sctx, req)
	if !timer.Stop() {
		return result{err: context.Cause(sctx)}
	}
	if err != nil {
		return result{err: err}
	}
	start := time.Now()
	w.update(func(s *Status) { s.Controller = addr; s.Streams++ })
	w.mu.Lock()
	w.lastController = addr
	w.mu.Unlock()
	defer w.update(func(s *Status) { s.Controller = "" })
	w.log.Info("watching tables", "controller", addr, "have", versionString(have))

	// Leave a controller as soon as its connection stops being ready,
	// rather than when a draining controller finally cuts the stream. The
	// stream can be open before the connection says Ready (grpc hands the
	// new picker to waiting calls before it publishes the state), so only
	// leaving Ready, or failing, counts.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil)
	wg.Go(func() {
		wasReady := false
		for s := conn.GetState(); ; s = conn.GetState() {
			switch {
			case s == connectivity.Ready:
				wasReady = true
			case wasReady || s == connectivity.TransientFailure || s == connectivity.Shutdown:
				cancel(fmt.Errorf("%w (%s)", errLeft, s))
				return
			}
			if !conn.WaitForStateChange(sctx, s) {
				return
			}
		}
	})

	// Controllers keep acknowledgements in memory: tell this one which
	// version is in force even if it has nothing newer to send.
	if have != nil {
		w.ack(ctx, client, addr, have.Version, "")
	}
	wg.Go(func() {
		t := time.NewTicker(w.cfg.AckInterval)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				if in := w.cfg.Balancer.Table(); in != nil {
					w.ack(sctx, client, addr, in.Version, "")
				}
			}
		}
	})

	if w.cfg.StatsInterval > 0 {
		wg.Go(func() { w.reportStats(sctx, client, addr) })
	}

	gotTable := false
	for {
		resp, err := stream.Recv()
		if err != nil {
			if c := context.Cause(sctx); c != nil && ctx.Err() == nil {
				err = c
			} else if errors.Is(err, io.EOF) {
				err = errors.New("controller ended the stream")
			}
			return result{healthy: gotTable || time.Since(start) >= w.cfg.BackoffMax, err: err}
		}
		gotTable = true
		w.handle(ctx, client, addr, resp)
	}
}

// handle applies one table and acknowledges it.
func (w *Watcher) handle(ctx context.Context, client pb.BalancerServiceClient, addr string, resp *pb.WatchTableResponse) {
	t, err := FromProto(resp.GetTable())
	if err == nil {
		err = w.cfg.Balancer.Apply(t)
	}
	log := w.log.With("controller", addr, "controller_id", resp.GetController())
	var prevID string
	w.update(func(s *Status) { prevID, s.ControllerID = s.ControllerID, resp.GetController() })
	if prevID != resp.GetController() {
		log.Info("receiving tables from controller")
	}
	switch {
	case err == nil || errors.Is(err, balancer.ErrPersist):
		// ErrPersist: in force but not saved; the balancer logged it.
		w.update(func(s *Status) { s.Applied++ })
		log.Debug("table received", "version", t.Version.String(), "pools", len(t.Pools))
		w.ack(ctx, client, addr, t.Version, "")
	case errors.Is(err, balancer.ErrStaleVersion):
		// Never an error: the table in force is newer (a -table file, or a
		// controller that lags). Nothing was applied, so nothing is acked.
		w.update(func(s *Status) { s.Stale++ })
		log.Info("ignoring a table older than the one in force", "version", t.Version.String(),
			"have", versionString(w.cfg.Balancer.Table()))
	default:
		w.update(func(s *Status) { s.Refused++; s.LastError = err.Error() })
		v := resp.GetTable().GetVersion()
		log.Error("refused a table; the table in force stays", "version", versionFromProto(v).String(), "err", err)
		if v != nil {
			w.ack(ctx, client, addr, versionFromProto(v), err.Error())
		}
	}
}

// ack reports a version to the controller; a failure is logged and
// counted, never retried: the next table, or the next stream, acks again.
func (w *Watcher) ack(ctx context.Context, client pb.BalancerServiceClient, addr string, v balancer.Version, reason string) {
	actx, cancel := context.WithTimeout(ctx, w.cfg.AckTimeout)
	defer cancel()
	_, err := client.AckTable(actx, &pb.AckTableRequest{Balancer: w.cfg.Name, Version: versionToProto(v), Error: truncate(reason, maxAckError)})
	if err != nil && ctx.Err() == nil {
		w.update(func(s *Status) { s.AckFailures++; s.LastError = fmt.Sprintf("ack %v to %s: %v", v, addr, err) })
		w.log.Warn("acknowledge table", "controller", addr, "version", v.String(), "err", err)
	}
}

// reportStats sends the balancer's counters every StatsInterval, and soon
// after a request starts waiting for a backend, until ctx ends (with the
// stream) or the controller answers UNIMPLEMENTED: an older controller has
// no use for them, so this stream stops asking. Failures are counted and
// logged once per streak, never retried.
func (w *Watcher) reportStats(ctx context.Context, client pb.BalancerServiceClient, addr string) {
	t := time.NewTicker(w.cfg.StatsInterval)
	defer t.Stop()
	held := w.cfg.Balancer.Held()
	// gap runs while a prompt report waits for PromptReportGap to pass
	// since the last report.
	gap := time.NewTimer(PromptReportGap)
	gap.Stop()
	defer gap.Stop()
	waitingGap := false
	var last time.Time
	failing := 0 // failed reports in a row
	for {
		heldC := held
		if waitingGap {
			heldC = nil // one prompt report is due already
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-heldC:
			if d := PromptReportGap - time.Since(last); d > 0 {
				gap.Reset(d)
				waitingGap = true
				continue
			}
		case <-gap.C:
		}
		if waitingGap {
			gap.Stop()
			waitingGap = false
		}
		// This report covers every hold signalled so far.
		select {
		case <-held:
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, w.cfg.AckTimeout)
		req := w.report()
		_, err := client.ReportStats(rctx, req)
		cancel()
		last = time.Now()
		if err != nil && ctx.Err() != nil {
			return // the stream ended, cutting the call short: not a failure
		}
		w.update(func(s *Status) {
			s.StatsReports++
			if err != nil {
				s.StatsFailures++
			}
		})
		switch code := status.Code(err); {
		case err == nil:
			if failing > 0 {
				w.log.Debug("stats reports go through again", "controller", addr, "failures", failing)
			}
			failing = 0
		case code == codes.Unimplemented:
			w.log.Info("controller takes no stats reports; none more on this stream", "controller", addr, "err", err)
			return
		default:
			if failing == 0 {
				w.log.Debug("report stats failed; the next tick sends fresh counters", "controller", addr, "code", code.String(), "err", err)
			}
			failing++
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

func versionString(t *balancer.Table) string {
	if t == nil {
		return "none"
	}
	return t.Version.String()
}

// Leave sends the balancer's last stats report, marked leaving, once it
// has stopped taking requests and finished those it had: the leader then
// stops waiting for its reports and acknowledgements, so that its silence
// holds back no pool's scale to zero (for the 11 minutes the leader would
// otherwise keep it) and no removed instance's stop. It tries each
// controller in turn, the one last watched first, within ctx; without
// stats reports (StatsInterval 0) it sends nothing.
func (w *Watcher) Leave(ctx context.Context) error {
	if w.cfg.StatsInterval <= 0 {
		return nil
	}
	req := w.report()
	req.Leaving = true
	order := w.cfg.Controllers
	w.mu.Lock()
	last := w.lastController
	w.mu.Unlock()
	if last != "" {
		order = append([]string{last}, slices.DeleteFunc(slices.Clone(order), func(a string) bool { return a == last })...)
	}
	var err error
	for _, addr := range order {
		if err = w.leave(ctx, addr, req); err == nil || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (w *Watcher) leave(ctx context.Context, addr string, req *pb.ReportStatsRequest) error {
	conn, err := w.cfg.Dial(addr)
	if err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, w.cfg.AckTimeout)
	defer cancel()
	if _, err := pb.NewBalancerServiceClient(conn).ReportStats(cctx, req); err != nil {
		return fmt.Errorf("%s: %w", addr, err)
	}
	return nil
}
