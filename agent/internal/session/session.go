package session

import (
	"regexp"
	"strconv"

	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/backoff"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/logging"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// FactSource tells what the host reports when it registers.
type FactSource interface {
	Facts(ctx context.Context) (*pb.NodeFacts, error)
}

// Instances is the agent's process driver as the session sees it.
type Instances interface {
	// Assign applies the assignments the leader sent; it reports false
	// when it ignored them as older than ones it applied.
	Assign(a *pb.Assignments) bool
	// Report lists every instance the driver has.
	Report() *pb.InstanceReport
	// Changed returns a channel closed at the next change of the report.
	Changed() <-chan struct{}
}

// ConditionSource keeps the host's conditions.
type ConditionSource interface {
	// Conditions lists the conditions the host is under.
	Conditions() []*pb.NodeCondition
	// Changed returns a channel closed at the next change of Conditions.
	Changed() <-chan struct{}
}

// DefaultMaxBatch is the batch size used when a Welcome names none.
const DefaultMaxBatch = 100

// ErrNotConnected is what Ready reports while no stream to a leader is up.
var ErrNotConnected = errors.New("not connected to a controller leader")

// Config configures a Session.
type Config struct {
	// Node is the agent's node id, sent in the Hello.
	Node string
	// Labels are sent in the Hello.
	Labels map[string]string
	// Interval is the sampling interval, sent in the Hello; a Heartbeat is
	// sent after an Interval without anything else to send.
	Interval time.Duration
	// Controllers are the host:port addresses tried in turn.
	Controllers []string
	// Instances, when set, receives the leader's assignments, and its
	// reports are sent after the Welcome and on every change.
	Instances Instances
	// Conditions, when set, gives the host's conditions sent in every
	// Hello, and again on the stream whenever they change.
	Conditions ConditionSource
	// AllowedCommands, the agent's -allow-commands rules, go with the facts
	// of every Hello, read or not.
	AllowedCommands []string
	// Facts, when set, is asked for the host's facts before every Hello;
	// when it fails, the last facts it gave are sent again.
	Facts FactSource
	// BufferSize bounds the samples kept until acknowledged; beyond it the
	// oldest are dropped.
	BufferSize int
	// BackoffBase and BackoffMax bound the wait between failed attempts:
	// the n-th consecutive failure waits a random time between BackoffBase
	// and min(BackoffMax, BackoffBase·2ⁿ).
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// HelloTimeout bounds the wait for the answer to a Hello.
	HelloTimeout time.Duration
	// AckTimeout: a stream whose oldest unacknowledged batch is older than
	// this is given up and reconnected. It must be well under the
	// controllers' heartbeat TTL: a new leader marks a node down when it
	// has not heard from it for the TTL after taking office, so an agent
	// whose old leader vanished without closing the stream has to notice
	// and reach the new one within that time.
	AckTimeout time.Duration
	// MaxInFlight bounds the batches sent and not yet acknowledged.
	MaxInFlight int
	// MaxRedirects bounds the Redirects followed at once, without back-off,
	// before a Welcome; past it the Session backs off as after a failure.
	MaxRedirects int
	// Dial opens a client connection to a controller; nil means
	// grpcx.Dial. Each attempt gets its own connection, closed when the
	// attempt ends, so that only the Session's back-off paces attempts.
	Dial func(addr string) (*grpc.ClientConn, error)
	// Logger is the session's logger; nil discards.
	Logger *slog.Logger
	// Registerer receives the session's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// DefaultConfig returns a config with the agent's defaults; Node and
// Controllers must still be set.
func DefaultConfig() Config {
	return Config{
		Interval:     time.Second,
		BufferSize:   60,
		BackoffBase:  100 * time.Millisecond,
		BackoffMax:   5 * time.Second,
		HelloTimeout: 10 * time.Second,
		AckTimeout:   5 * time.Second,
		MaxInFlight:  4,
		MaxRedirects: 3,
	}
}

// Validate reports the first field that makes the config unusable.
func (c Config) Validate() error {
	switch {
	case c.Node == "":
		return errors.New("session: Node must be set")
	case len(c.Controllers) == 0:
		return errors.New("session: Controllers must list at least one address")
	case c.Interval <= 0:
		return errors.New("session: Interval must be positive")
	case c.BufferSize < 1:
		return errors.New("session: BufferSize must be at least 1")
	case c.BackoffBase <= 0 || c.BackoffMax < c.BackoffBase:
		return errors.New("session: need 0 < BackoffBase <= BackoffMax")
	case c.HelloTimeout <= 0 || c.AckTimeout <= 0:
		return errors.New("session: HelloTimeout and AckTimeout must be positive")
	case c.MaxInFlight < 1:
		return errors.New("session: MaxInFlight must be at least 1")
	case c.MaxRedirects < 0:
		return errors.New("session: MaxRedirects must not be negative")
	}
	for _, a := range c.Controllers {
		if a == "" {
			return errors.New("session: empty controller address")
		}
	}
	return nil
}

// Session streams samples to the controller leader. Offer, Ready and
// Connected are safe for concurrent use; Run is called once.
type Session struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	wake chan struct{}

	connected atomic.Bool

	mu  sync.Mutex
	buf buffer

	// Owned by Run.
	seq      uint64        // last batch seq sent in the agent's life
	splitCap int           // largest batch after RESOURCE_EXHAUSTED, 0 = none
	facts    *pb.NodeFacts // the last facts read
	// jitter returns a random int64 in [0, n); tests replace it.
	jitter func(n int64) int64

	// assigned is the latest assignments received and not yet handed to
	// Instances, and from which controller; assignWake wakes the
	// goroutine that hands them (applyAssignments).
	assignMu     sync.Mutex
	assigned     *pb.Assignments
	assignedFrom string
	assignWake   chan struct{}
}

// New returns a Session ready to Run.
func New(cfg Config) (*Session, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Dial == nil {
		cfg.Dial = func(addr string) (*grpc.ClientConn, error) { return grpcx.Dial(addr) }
	}
	return &Session{
		cfg:        cfg,
		log:        logging.OrDiscard(cfg.Logger),
		m:          newMetrics(cfg.Registerer),
		wake:       make(chan struct{}, 1),
		buf:        buffer{max: cfg.BufferSize},
		jitter:     rand.Int64N,
		assignWake: make(chan struct{}, 1),
	}, nil
}

// Offer queues s to be sent, whether or not a stream is up, and never
// blocks. When the buffer is full the oldest sample is dropped. The
// Session owns s afterwards: the caller must not modify it.
func (s *Session) Offer(sample *pb.Sample) {
	s.mu.Lock()
	dropped := s.buf.push(sample)
	n := len(s.buf.items)
	s.mu.Unlock()
	s.m.buffered.Set(float64(n))
	if dropped > 0 {
		s.m.dropped.Add(float64(dropped))
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Buffered returns how many samples wait for an acknowledgement.
func (s *Session) Buffered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.buf.items)
}

// Connected reports whether a stream to a leader is up.
func (s *Session) Connected() bool { return s.connected.Load() }

// Ready returns nil while a stream to a leader is up, else
// ErrNotConnected.
func (s *Session) Ready() error {
	if s.Connected() {
		return nil
	}
	return ErrNotConnected
}

// Run connects and keeps a stream to the leader until ctx is cancelled,
// then returns nil. Every failure is followed by a back-off wait, except
// that a Redirect naming a leader is followed at once.
func (s *Session) Run(ctx context.Context) error {
	if s.cfg.Instances != nil {
		var wg sync.WaitGroup
		wg.Go(func() { s.applyAssignments(ctx) })
		defer wg.Wait()
	}
	idx := 0
	failures := 0
	redirects := 0
	// answered is when the cluster last showed it is alive but leaderless
	// for the moment: a stream to the leader ended, or a controller
	// redirected to a leader that could not be reached or knew none.
	var answered time.Time
	addr := s.cfg.Controllers[0]
	for {
		r := s.attempt(ctx, addr)
		if ctx.Err() != nil {
			return nil
		}
		s.m.reconnects.Inc()
		if r.welcomed {
			failures, redirects = 0, 0
		}
		if r.redirect != "" && r.redirect != addr && redirects < s.cfg.MaxRedirects {
			redirects++
			s.log.Info("redirected to the leader", "controller", addr, "leader", r.redirect, "leader_id", r.leaderID)
			addr = r.redirect
			continue
		}
		s.logEnd(addr, r, failures)
		if !r.welcomed || r.silent {
			// The leader may be elsewhere: try the next controller, and
			// not the silent one again (it may be in the list after a
			// Redirect led to it).
			gone := addr
			for range len(s.cfg.Controllers) {
				idx = (idx + 1) % len(s.cfg.Controllers)
				if addr = s.cfg.Controllers[idx]; !r.silent || addr != gone {
					break
				}
			}
		}
		// After a stream that was welcomed ends, the same controller is
		// tried again first: it was the leader a moment ago. Not if it
		// had gone silent: a controller cut off would only make the
		// next attempt wait out its Hello timeout.
		wait := s.backoff(failures)
		if r.welcomed || redirects > 0 || r.electing {
			answered = time.Now()
		}
		if time.Since(answered) < electionWindow {
			// The leader just went away, or a controller answered and
			// named a leader that is gone, or knew of none: the cluster is
			// electing a new one, which takes about a second. Keep asking
			// often, also of the controllers that do not answer (the old
			// leader), instead of backing off as from a dead cluster.
			wait = min(wait, electionRetry*s.cfg.BackoffBase)
		}
		failures++
		redirects = 0
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// electionRetry bounds, in units of BackoffBase, the wait between attempts
// for electionWindow after the cluster last showed it was electing a
// leader.
const (
	electionRetry  = 4
	electionWindow = 10 * time.Second
)

// backoff returns the wait after the n-th consecutive failure (from 0).
func (s *Session) backoff(n int) time.Duration {
	base := s.cfg.BackoffBase
	d := backoff.Exponential(base, s.cfg.BackoffMax, n)
	if d <= base {
		return base
	}
	return base + time.Duration(s.jitter(int64(d-base)+1))
}

func (s *Session) logEnd(addr string, r result, failures int) {
	if r.err == nil {
		return
	}
	code := status.Code(r.err)
	switch code {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.ResourceExhausted, codes.Unauthenticated, codes.PermissionDenied:
		s.log.Error("controller refused the stream", "controller", addr, "code", code.String(), "err", r.err)
		return
	}
	lvl := slog.LevelDebug
	if failures == 0 {
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, "stream to controller ended", "controller", addr, "code", code.String(), "err", r.err)
}

// result is how one connection attempt ended.
type result struct {
	welcomed bool
	// redirect is the leader a Redirect named ("" for none or unknown).
	redirect string
	leaderID string
	// electing: a controller answered with a Redirect naming no leader.
	electing bool
	// silent: the stream ended after the controller had sent nothing for
	// AckTimeout or more: it vanished (a host cut off, a pulled cable)
	// rather than closing the stream.
	silent bool
	err    error
}

// flight is a batch sent and not yet acknowledged.
type flight struct {
	seq uint64
	n   int
	at  time.Time
}

// stream is the state of one attempt's stream.
type stream struct {
	addr       string
	rpc        pb.AgentService_ConnectClient
	msgs       <-chan *pb.ConnectResponse
	errc       <-chan error
	welcomed   bool
	lateBefore uint64
	maxBatch   int
	flights    []flight
	heard      time.Time // the last message from the controller
	// condChanged is closed when the conditions last sent changed; nil
	// without a ConditionSource.
	condChanged <-chan struct{}
}

// attempt dials addr, says Hello and, once welcomed, streams until the
// stream fails or ctx is cancelled.
func (s *Session) attempt(ctx context.Context, addr string) result {
	conn, err := s.cfg.Dial(addr)
	if err != nil {
		return result{err: err}
	}
	defer conn.Close()
	actx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	hello := &pb.Hello{Node: s.cfg.Node, Labels: s.cfg.Labels, Interval: durationpb.New(s.cfg.Interval)}
	if s.cfg.Facts != nil {
		fctx, fcancel := context.WithTimeout(actx, s.cfg.HelloTimeout)
		f, err := s.cfg.Facts.Facts(fctx)
		fcancel()
		switch {
		case err == nil:
			s.facts = f
		case s.facts != nil:
			s.log.Warn("cannot read host facts; registering with the last ones read", "err", err)
		default:
			s.log.Warn("cannot read host facts; registering without them", "err", err)
		}
	}
	// Subscribed before the read, so that a change after it is sent.
	var condChanged <-chan struct{}
	if s.cfg.Conditions != nil {
		condChanged = s.cfg.Conditions.Changed()
		hello.Conditions = s.cfg.Conditions.Conditions()
	}
	// Controllers require facts in a Hello, even empty ones.
	hello.Facts = &pb.NodeFacts{}
	if s.facts != nil {
		hello.Facts = proto.CloneOf(s.facts)
	}
	hello.Facts.AllowedCommands = s.cfg.AllowedCommands

	var timedOut atomic.Bool
	helloTimer := time.AfterFunc(s.cfg.HelloTimeout, func() {
		timedOut.Store(true)
		cancel()
	})
	defer helloTimer.Stop()
	rpc, err := pb.NewAgentServiceClient(conn).Connect(actx)
	if err != nil {
		return result{err: helloErr(err, &timedOut, s.cfg.HelloTimeout)}
	}
	msgs := make(chan *pb.ConnectResponse)
	errc := make(chan error, 1)
	wg.Go(func() {
		for {
			m, err := rpc.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- m:
			case <-actx.Done():
				errc <- actx.Err()
				return
			}
		}
	})
	st := &stream{addr: addr, rpc: rpc, msgs: msgs, errc: errc, maxBatch: DefaultMaxBatch, condChanged: condChanged}
	if err := rpc.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Hello{Hello: hello}}); err != nil {
		return result{err: helloErr(s.streamErr(st, err), &timedOut, s.cfg.HelloTimeout)}
	}
	var w *pb.Welcome
	select {
	case m := <-msgs:
		switch m := m.GetMessage().(type) {
		case *pb.ConnectResponse_Welcome:
			w = m.Welcome
		case *pb.ConnectResponse_Redirect:
			return result{redirect: m.Redirect.GetLeaderAddress(), leaderID: m.Redirect.GetLeaderId(),
				electing: m.Redirect.GetLeaderAddress() == "",
				err:      fmt.Errorf("redirected by %s to leader %q at %q", addr, m.Redirect.GetLeaderId(), m.Redirect.GetLeaderAddress())}
		default:
			return result{err: fmt.Errorf("controller %s answered the Hello with %T, not a Welcome", addr, m)}
		}
	case err := <-errc:
		return result{err: helloErr(err, &timedOut, s.cfg.HelloTimeout)}
	}
	if !helloTimer.Stop() {
		// The timer fired as the Welcome arrived; actx is cancelled.
		return result{err: fmt.Errorf("no answer to Hello within %s", s.cfg.HelloTimeout)}
	}

	st.welcomed, st.heard = true, time.Now()
	if w.GetMaxBatch() > 0 {
		st.maxBatch = int(w.GetMaxBatch())
	}
	s.mu.Lock()
	st.lateBefore = s.buf.nextID
	s.mu.Unlock()
	s.connected.Store(true)
	s.m.connected.Set(1)
	s.log.Info("connected to leader", "controller", addr, "leader", w.GetController(), "term", w.GetTerm(),
		"max_batch", w.GetMaxBatch(), "heartbeat_ttl", w.GetHeartbeatTtl().AsDuration())
	defer func() {
		s.connected.Store(false)
		s.m.connected.Set(0)
		s.mu.Lock()
		s.buf.unsend()
		s.mu.Unlock()
	}()
	r := s.stream(actx, st, w)
	r.welcomed = true
	return r
}

// stream sends batches and heartbeats on a welcomed stream and handles
// acknowledgements until the stream fails or ctx is cancelled.
func (s *Session) stream(ctx context.Context, st *stream, w *pb.Welcome) result {
	hbEvery := s.cfg.Interval
	if ttl := w.GetHeartbeatTtl().AsDuration(); ttl > 0 && ttl/3 < hbEvery {
		hbEvery = ttl / 3
	}
	hb := time.NewTimer(hbEvery)
	defer hb.Stop()
	ackCheck := time.NewTicker(max(s.cfg.AckTimeout/4, time.Millisecond))
	defer ackCheck.Stop()
	var instChanged <-chan struct{}
	if s.cfg.Instances != nil {
		instChanged = s.cfg.Instances.Changed()
		if err := s.sendReport(st); err != nil {
			return s.failed(st, err)
		}
	}
	for {
		sent, err := s.sendPending(st)
		if err != nil {
			return s.failed(st, err)
		}
		if sent {
			hb.Reset(hbEvery)
		}
		select {
		case <-ctx.Done():
			return result{}
		case <-s.wake:
		case m := <-st.msgs:
			st.heard = time.Now()
			switch m := m.GetMessage().(type) {
			case *pb.ConnectResponse_Ack:
				s.ack(st, m.Ack)
			case *pb.ConnectResponse_Assignments:
				if s.cfg.Instances == nil {
					s.log.Warn("assignments received, but this agent runs no instances", "controller", st.addr)
				} else {
					s.queueAssignments(m.Assignments, st.addr)
				}
			case *pb.ConnectResponse_Redirect:
				return result{redirect: m.Redirect.GetLeaderAddress(), leaderID: m.Redirect.GetLeaderId(),
					err: fmt.Errorf("controller %s stopped leading; leader %q at %q", st.addr, m.Redirect.GetLeaderId(), m.Redirect.GetLeaderAddress())}
			default:
				s.log.Debug("ignoring unexpected message", "controller", st.addr, "type", fmt.Sprintf("%T", m))
			}
		case err := <-st.errc:
			return s.failed(st, err)
		case <-instChanged:
			instChanged = s.cfg.Instances.Changed()
			if err := s.sendReport(st); err != nil {
				return s.failed(st, err)
			}
			hb.Reset(hbEvery)
		case <-st.condChanged:
			st.condChanged = s.cfg.Conditions.Changed()
			err := st.rpc.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Conditions{
				Conditions: &pb.NodeConditions{Conditions: s.cfg.Conditions.Conditions()}}})
			if err != nil {
				return s.failed(st, s.streamErr(st, err))
			}
			hb.Reset(hbEvery)
		case <-hb.C:
			err := st.rpc.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Heartbeat{
				Heartbeat: &pb.Heartbeat{Time: timestamppb.Now()}}})
			if err != nil {
				return s.failed(st, s.streamErr(st, err))
			}
			s.m.heartbeats.Inc()
			hb.Reset(hbEvery)
		case now := <-ackCheck.C:
			if len(st.flights) > 0 && now.Sub(st.flights[0].at) > s.cfg.AckTimeout {
				return s.failed(st, fmt.Errorf("batch %d not acknowledged within %s", st.flights[0].seq, s.cfg.AckTimeout))
			}
		}
	}
}

// sendReport sends the driver's report of its instances.
func (s *Session) sendReport(st *stream) error {
	err := st.rpc.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Instances{Instances: s.cfg.Instances.Report()}})
	if err != nil {
		return s.streamErr(st, err)
	}
	return nil
}

// sendPending sends batches of unsent samples while the in-flight window
// has room, and reports whether it sent any.
func (s *Session) sendPending(st *stream) (bool, error) {
	limit := st.maxBatch
	if s.splitCap > 0 {
		limit = min(limit, s.splitCap)
	}
	sent := false
	for len(st.flights) < s.cfg.MaxInFlight {
		seq := s.seq + 1
		s.mu.Lock()
		samples := s.buf.take(limit, seq, st.lateBefore)
		s.mu.Unlock()
		if len(samples) == 0 {
			return sent, nil
		}
		s.seq = seq
		st.flights = append(st.flights, flight{seq: seq, n: len(samples), at: time.Now()})
		err := st.rpc.Send(&pb.ConnectRequest{Message: &pb.ConnectRequest_Samples{
			Samples: &pb.SampleBatch{Seq: seq, Samples: samples}}})
		if err != nil {
			return sent, s.streamErr(st, err)
		}
		s.m.batches.Inc()
		sent = true
	}
	return sent, nil
}

// ack forgets the samples of the acknowledged batches.
func (s *Session) ack(st *stream, a *pb.Ack) {
	i := 0
	for i < len(st.flights) && st.flights[i].seq <= a.GetSeq() {
		i++
	}
	if i == 0 {
		s.log.Debug("ack for no batch in flight", "controller", st.addr, "seq", a.GetSeq())
		return
	}
	st.flights = st.flights[i:]
	s.mu.Lock()
	s.buf.ack(a.GetSeq())
	n := len(s.buf.items)
	s.mu.Unlock()
	s.m.buffered.Set(float64(n))
	s.m.acked.Add(float64(a.GetAccepted()))
	s.m.rejected.Add(float64(a.GetRejected()))
}

// failed ends a stream on err. A RESOURCE_EXHAUSTED is taken to be about
// the oldest unacknowledged batch, since the controller reads batches in
// order: later batches are cut at half its size, and a batch of a single
// sample is dropped rather than sent again.
func (s *Session) failed(st *stream, err error) result {
	if status.Code(err) == codes.InvalidArgument && len(st.flights) > 0 {
		s.dropRefused(st, err)
	}
	if status.Code(err) == codes.ResourceExhausted && len(st.flights) > 0 {
		n := st.flights[0].n
		if n <= 1 {
			s.mu.Lock()
			dropped := s.buf.dropSent(st.flights[0].seq)
			left := len(s.buf.items)
			s.mu.Unlock()
			if dropped {
				s.m.dropped.Inc()
			}
			s.m.buffered.Set(float64(left))
			s.log.Error("controller cannot take a single sample; dropped it", "controller", st.addr, "seq", st.flights[0].seq)
		} else {
			s.splitCap = n / 2
			s.log.Warn("batch too large for the controller; splitting", "controller", st.addr,
				"seq", st.flights[0].seq, "samples", n, "max_batch", s.splitCap)
		}
	}
	return result{err: err, silent: st.welcomed && time.Since(st.heard) >= s.cfg.AckTimeout}
}

// refusedSample matches the field the controller names when it refuses one
// sample of a batch, e.g. "samples[3].cpu_percent".
var refusedSample = regexp.MustCompile(`^samples\[(\d+)\]`)

// dropRefused drops the sample an INVALID_ARGUMENT names in its BadRequest
// detail, from the oldest unacknowledged batch (the controller reads
// batches in order), so that one bad reading is not sent again on every
// reconnect.
func (s *Session) dropRefused(st *stream, err error) {
	for _, d := range status.Convert(err).Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			m := refusedSample.FindStringSubmatch(v.GetField())
			if m == nil {
				continue
			}
			i, _ := strconv.Atoi(m[1])
			s.mu.Lock()
			dropped := s.buf.dropInBatch(st.flights[0].seq, i)
			left := len(s.buf.items)
			s.mu.Unlock()
			if dropped {
				s.m.dropped.Inc()
				s.m.buffered.Set(float64(left))
				s.log.Error("controller refused a sample; dropped it", "controller", st.addr,
					"field", v.GetField(), "reason", v.GetDescription())
			}
			return
		}
	}
}

// streamErr turns the io.EOF that a Send returns on a broken stream into
// the stream's status, which the receiver reads after any messages that
// came before it; acknowledgements among those are still applied.
func (s *Session) streamErr(st *stream, sendErr error) error {
	t := time.NewTimer(time.Second)
	defer t.Stop()
	for {
		select {
		case err := <-st.errc:
			return err
		case m := <-st.msgs:
			if a := m.GetAck(); a != nil && st.welcomed {
				s.ack(st, a)
			}
		case <-t.C:
			return sendErr
		}
	}
}

func helloErr(err error, timedOut *atomic.Bool, d time.Duration) error {
	if timedOut.Load() {
		return fmt.Errorf("no answer to Hello within %s: %w", d, err)
	}
	return err
}

// queueAssignments hands a, received from the controller at from, to
// applyAssignments, replacing any not applied yet: each holds every
// instance this node is to run, so the latest is all that counts.
func (s *Session) queueAssignments(a *pb.Assignments, from string) {
	s.assignMu.Lock()
	s.assigned, s.assignedFrom = a, from
	s.assignMu.Unlock()
	select {
	case s.assignWake <- struct{}{}:
	default:
	}
}

// applyAssignments hands the assignments received to Instances, the
// latest each time, until ctx ends. It runs apart from the stream: the
// driver saves each assignment before it returns, and a stalled disk must
// not hold the samples, heartbeats and instance reports, or the node would
// be taken for dead while its instances run.
func (s *Session) applyAssignments(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.assignWake:
		}
		s.assignMu.Lock()
		a, from := s.assigned, s.assignedFrom
		s.assigned = nil
		s.assignMu.Unlock()
		if a != nil && !s.cfg.Instances.Assign(a) {
			s.log.Warn("ignored assignments older than those applied", "controller", from,
				"term", a.GetTerm(), "index", a.GetIndex())
		}
	}
}
