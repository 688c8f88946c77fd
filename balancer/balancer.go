package balancer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// ErrPersist wraps a failure to write an applied table to DataDir. The table
// is in force all the same.
var ErrPersist = errors.New("balancer: table applied but not persisted")

// TableFileName is the name of the table file inside DataDir.
const TableFileName = "table.json"

// Balancer is an HTTP/1.1 reverse proxy whose routes and backends come from
// the Table in force. All methods are safe for concurrent use.
type Balancer struct {
	cfg     Config
	log     *slog.Logger
	trusted trustedSet
	// httpsPort is the port of redirects to https: TLSListenAddr's, or
	// empty for 443.
	httpsPort string
	dialer    net.Dialer
	snap      atomic.Pointer[snapshot]
	counters  counters
	// slots holds a token per client connection open, with
	// Config.MaxConns; nil without a bound.
	slots chan struct{}

	// applyMu serializes Apply and guards the registries below. The request
	// path never takes it: it reads snap.
	applyMu  sync.Mutex
	pools    map[string]*poolState
	backends map[backendKey]*backend
	removed  []*backend // draining after removal, until their last connection closes

	// h2 serves the clients that choose HTTP/2 (Config.HTTP2); nil
	// without.
	h2 *h2Server

	connMu   sync.Mutex
	clients  map[*clientConn]struct{}
	shutting atomic.Bool
	wg       sync.WaitGroup

	// closing is closed when shutdown begins: held requests stop waiting.
	closing   chan struct{}
	closeOnce sync.Once
	// held is signalled (without blocking) when a request starts waiting
	// for a backend; see Held.
	held chan struct{}

	// pendingWrite is the applied table next to be written to DataDir;
	// writing is true while a writer goroutine runs (see persist).
	pendingWrite atomic.Pointer[tableWrite]
	writing      atomic.Bool
}

// tableWrite is a table to write to DataDir; done gets the write's
// outcome, or nil when a later table replaced it before it was written.
type tableWrite struct {
	t    *Table
	done chan error
}

// persistWait bounds how long Apply waits for its table to be written to
// DataDir. The write goes on beyond it: a stalled disk holds neither the
// next tables nor their acknowledgements.
const persistWait = time.Second

type backendKey struct{ pool, addr string }

// snapshot is the compiled form of one applied table. Immutable.
type snapshot struct {
	table  *Table
	router *router
	pools  []*poolSnap
	// replaced is closed once a newer snapshot is in force: requests held
	// for a backend look their route up again.
	replaced chan struct{}
}

// New returns a Balancer with no table; it answers 503 until Apply succeeds.
func New(cfg Config) (*Balancer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	b := &Balancer{
		cfg:      cfg,
		log:      log.With("component", "balancer"),
		trusted:  newTrustedSet(cfg.TrustedProxies),
		dialer:   net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second},
		pools:    map[string]*poolState{},
		backends: map[backendKey]*backend{},
		clients:  map[*clientConn]struct{}{},
		closing:  make(chan struct{}),
		held:     make(chan struct{}, 1),
	}
	if _, port, err := net.SplitHostPort(cfg.TLSListenAddr); err == nil && port != "443" && port != "0" {
		b.httpsPort = port
	}
	if cfg.MaxConns > 0 {
		b.slots = make(chan struct{}, cfg.MaxConns)
	}
	if cfg.HTTP2 {
		b.h2 = newH2Server(&b.cfg, b.log)
		b.cfg.TLS = cfg.TLS.Clone()
		b.cfg.TLS.NextProtos = []string{http2.NextProtoTLS, "http/1.1"}
	}
	return b, nil
}

// Table returns the table in force, or nil before the first Apply. The caller
// must not modify it.
func (b *Balancer) Table() *Table {
	if s := b.snap.Load(); s != nil {
		return s.table
	}
	return nil
}

// Ready reports whether a table is in force.
func (b *Balancer) Ready() bool { return b.snap.Load() != nil }

// Apply validates t and puts it in force atomically. A table older than the
// one in force is refused with ErrStaleVersion; one with the same version is
// accepted without effect (a controller re-sends its table on reconnect).
// Backends that stay (same pool name and address) keep their connections,
// health and statistics; removed ones drain: requests in flight complete, and
// their connections close as they become idle. With DataDir set the table is
// written there, by a goroutine of its own: Apply returns an error wrapping
// ErrPersist, the table in force, when the write fails within persistWait,
// and returns nil when it takes longer (it goes on, and a later table
// replaces this one if it comes first).
func (b *Balancer) Apply(t *Table) error {
	if err := t.Validate(); err != nil {
		b.counters.applyFailed.Add(1)
		return err
	}
	b.applyMu.Lock()
	defer b.applyMu.Unlock()
	cur := b.snap.Load()
	if cur != nil {
		switch t.Version.Compare(cur.table.Version) {
		case -1:
			b.counters.applyFailed.Add(1)
			return fmt.Errorf("%w: got %v, have %v", ErrStaleVersion, t.Version, cur.table.Version)
		case 0:
			return nil
		}
	}
	t = t.Clone()
	now := monoNow()
	pools := make(map[string]*poolState, len(t.Pools))
	backends := make(map[backendKey]*backend, len(b.backends))
	snap := &snapshot{table: t, router: newRouter(), replaced: make(chan struct{})}
	var slow int64
	if b.cfg.SlowStart > 0 {
		slow = int64(b.cfg.SlowStart)
	}
	for _, p := range t.Pools {
		st, existed := b.pools[p.Name]
		if !existed {
			st = &poolState{name: p.Name}
		}
		pools[p.Name] = st
		members := make([]member, 0, len(p.Backends))
		for _, bd := range p.Backends {
			k := backendKey{p.Name, bd.Address}
			be := b.backends[k]
			if be == nil {
				be = &backend{pool: p.Name, addr: bd.Address}
				// A backend joining a pool that already serves ramps up; the
				// backends of a new pool (or of the first table) start at full weight.
				if existed && slow > 0 {
					be.addedAt = now
				}
			}
			backends[k] = be
			w := int64(bd.Weight)
			if w == 0 {
				w = 1
			}
			members = append(members, member{b: be, weight: w, draining: bd.Draining})
		}
		ps := newPoolSnap(st, members, p.Policy, slow, b.cfg.SlowStartMinPercent)
		ps.hold = p.HoldWhenEmpty
		ps.httpsRedirect = p.HTTPSRedirect
		snap.pools = append(snap.pools, ps)
		prefix := p.PathPrefix
		if prefix == "" {
			prefix = "/"
		}
		for _, h := range p.Hosts {
			snap.router.add(h, prefix, ps)
		}
	}
	snap.router.finish()
	for k, be := range b.backends {
		if _, ok := backends[k]; !ok {
			be.removed.Store(true)
			b.removed = append(b.removed, be)
		}
	}
	b.pools, b.backends = pools, backends
	for _, ps := range snap.pools {
		ps.state.current.Store(ps)
	}
	b.snap.Store(snap)
	if cur != nil {
		close(cur.replaced)
	}
	b.counters.applied.Add(1)
	b.log.Info("table applied", "term", t.Version.Term, "index", t.Version.Index, "pools", len(t.Pools))
	if b.cfg.DataDir != "" {
		return b.persist(t)
	}
	return nil
}

// persist hands t, just applied, to the writer of DataDir, starting it if
// none runs, and waits for the write if it started it (persistWait at
// most). With applyMu held, so that the file ends with the last table
// applied.
func (b *Balancer) persist(t *Table) error {
	w := &tableWrite{t: t, done: make(chan error, 1)}
	if old := b.pendingWrite.Swap(w); old != nil {
		old.done <- nil
	}
	if !b.writing.CompareAndSwap(false, true) {
		// A write is under way (a slow or stalled disk): the writer takes
		// this table after it.
		return nil
	}
	go b.writeTables()
	timer := time.NewTimer(persistWait)
	defer timer.Stop()
	select {
	case err := <-w.done:
		if err != nil {
			return fmt.Errorf("%w: %w", ErrPersist, err)
		}
		return nil
	case <-timer.C:
		b.log.Warn("saving the table takes long: it is in force, and is saved once the disk answers",
			"dir", b.cfg.DataDir, "waited", persistWait)
		return nil
	}
}

// writeTables writes the pending tables to DataDir until none is left.
func (b *Balancer) writeTables() {
	for {
		w := b.pendingWrite.Swap(nil)
		if w == nil {
			b.writing.Store(false)
			// A table handed over between the Swap and the Store found
			// the writer running: take it, unless another writer has.
			if b.pendingWrite.Load() == nil || !b.writing.CompareAndSwap(false, true) {
				return
			}
			continue
		}
		err := WriteTableFile(filepath.Join(b.cfg.DataDir, TableFileName), w.t)
		if err != nil {
			b.counters.saveFailed.Add(1)
			b.log.Error("persist table", "version", w.t.Version.String(), "err", err)
		}
		w.done <- err
	}
}

// LoadDataDir applies the table saved in cfg.DataDir, if there is one. It
// returns (false, nil) when there is none.
func (b *Balancer) LoadDataDir() (bool, error) {
	if b.cfg.DataDir == "" {
		return false, nil
	}
	path := filepath.Join(b.cfg.DataDir, TableFileName)
	t, err := ReadTableFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := b.Apply(t); err != nil && !errors.Is(err, ErrStaleVersion) {
		return false, err
	}
	return true, nil
}

// Stats returns a copy of every backend's counters in the table in force,
// ordered by pool and address. Of the locks requests take, it takes only
// each backend's busy clock, for a moment.
func (b *Balancer) Stats() []BackendStats {
	s := b.snap.Load()
	if s == nil {
		return nil
	}
	now := monoNow()
	var out []BackendStats
	for _, ps := range s.pools {
		for i := range ps.members {
			m := &ps.members[i]
			out = append(out, m.b.snapshotStats(now, m.draining))
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pool != out[j].Pool {
			return out[i].Pool < out[j].Pool
		}
		return out[i].Address < out[j].Address
	})
	return out
}

// PoolStats is a point-in-time copy of one pool's counters beyond its
// backends: the requests that found no backend to take them. Counters are
// cumulative since the pool joined the table in force (a pool that leaves
// the table and comes back starts from zero), like BackendStats.
type PoolStats struct {
	Pool string
	// Waiting is the number of requests held now, waiting for a backend
	// (Pool.HoldWhenEmpty).
	Waiting int64
	// Unserved counts the requests routed to the pool that found no backend
	// to take them, held or not, whatever became of them.
	Unserved uint64
	// Held counts the held requests that stopped waiting, by how.
	Held HeldCounts
}

// HeldCounts count held requests by how their wait ended.
type HeldCounts struct {
	// Served: a table gave the request's route a backend, which it was
	// sent to.
	Served uint64
	// TimedOut: the pool's HoldWhenEmpty passed; the request was answered 503.
	TimedOut uint64
	// Closed: the balancer began shutting down; the request was answered 503.
	Closed uint64
	// Removed: a table without the request's route came; the request was
	// answered 404, as a new one would be.
	Removed uint64
	// Gone: the client closed its connection while the request waited; it
	// was dropped unanswered, and never sent to a backend.
	Gone uint64
}

// PoolStats returns the counters of every pool of the table in force,
// ordered by pool name, with or without backends. It takes no lock shared
// with requests.
func (b *Balancer) PoolStats() []PoolStats {
	s := b.snap.Load()
	if s == nil {
		return nil
	}
	out := make([]PoolStats, 0, len(s.pools))
	for _, ps := range s.pools {
		out = append(out, ps.state.snapshotStats())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out
}

// Held returns a channel that receives a value when a request starts
// waiting for a backend (Pool.HoldWhenEmpty), so that a stats report can
// tell the controllers at once that a pool scaled to zero is wanted. The
// channel has a buffer of one and is signalled without blocking: several
// holds before the receiver reads give one value, and the values are
// meant for one receiver. PoolStats has the counts.
func (b *Balancer) Held() <-chan struct{} { return b.held }

func (b *Balancer) signalHeld() {
	select {
	case b.held <- struct{}{}:
	default:
	}
}

// Counters are balancer-wide totals.
type Counters struct {
	// OpenConnections is the number of client connections open now.
	OpenConnections int64
	// Connections counts accepted client connections.
	Connections uint64
	// Requests counts request heads parsed.
	Requests uint64
	// LocalReplies counts answers the balancer made itself, by status code.
	LocalReplies map[int]uint64
	Retries      uint64
	Ejections    uint64
	// TablesApplied and TablesRejected count Apply outcomes;
	// TablesNotSaved the writes to DataDir that failed.
	TablesApplied  uint64
	TablesRejected uint64
	TablesNotSaved uint64
	// NoProxyHeader counts connections closed for want of a valid PROXY
	// protocol header (Config.ProxyProtocol).
	NoProxyHeader uint64
	// AccessLogDropped counts access log lines dropped (Config.AccessLog).
	AccessLogDropped uint64
	// MaxConns is Config.MaxConns; LimitWaits counts the times accepting
	// waited for a connection to close.
	MaxConns   int
	LimitWaits uint64
	// HTTP2 is Config.HTTP2. HTTP2Connections counts the client
	// connections that chose HTTP/2,
	// HTTP2Streams is the streams being served now, and HTTP2Errors counts
	// the clients' HTTP/2 protocol errors (Config.HTTP2).
	HTTP2            bool
	HTTP2Connections uint64
	HTTP2Streams     int64
	HTTP2Errors      uint64
}

// Counters returns a copy of the balancer-wide totals.
func (b *Balancer) Counters() Counters {
	c := &b.counters
	out := Counters{
		OpenConnections: c.open.Load(),
		Connections:     c.accepted.Load(),
		Requests:        c.requests.Load(),
		LocalReplies:    map[int]uint64{},
		Retries:         c.retries.Load(),
		Ejections:       c.ejections.Load(),
		TablesApplied:   c.applied.Load(),
		TablesRejected:  c.applyFailed.Load(),
		TablesNotSaved:  c.saveFailed.Load(),
		NoProxyHeader:   c.noProxyHeader.Load(),
		MaxConns:        b.cfg.MaxConns,
		LimitWaits:      c.limitWaits.Load(),
	}
	for i, code := range localCodes {
		if n := c.local[i].Load(); n > 0 {
			out.LocalReplies[code] = n
		}
	}
	if l := b.cfg.AccessLog; l != nil {
		out.AccessLogDropped = l.Dropped()
	}
	if h := b.h2; h != nil {
		out.HTTP2 = true
		out.HTTP2Connections, out.HTTP2Streams, out.HTTP2Errors = h.conns.Load(), h.streams.Load(), h.errors.Load()
	}
	return out
}

type counters struct {
	open        atomic.Int64
	accepted    atomic.Uint64
	requests    atomic.Uint64
	retries     atomic.Uint64
	ejections   atomic.Uint64
	applied     atomic.Uint64
	applyFailed atomic.Uint64
	saveFailed  atomic.Uint64
	local       [len(localCodes)]atomic.Uint64
	// noProxyHeader counts connections closed for want of a valid PROXY
	// protocol header (Config.ProxyProtocol).
	noProxyHeader atomic.Uint64
	limitWaits    atomic.Uint64
}

// Run listens on cfg.ListenAddr and serves until ctx is cancelled.
func (b *Balancer) Run(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", b.cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", b.cfg.ListenAddr, err)
	}
	if b.cfg.ProxyProtocol {
		ln = ProxyProtocolListener(ln, b.cfg.HeaderTimeout)
	}
	if b.cfg.TLSListenAddr == "" {
		return b.Serve(ctx, ln)
	}
	tln, err := lc.Listen(ctx, "tcp", b.cfg.TLSListenAddr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen %s: %w", b.cfg.TLSListenAddr, err)
	}
	if b.cfg.ProxyProtocol {
		tln = ProxyProtocolListener(tln, b.cfg.HeaderTimeout)
	}
	b.log.Info("serving TLS", "addr", tln.Addr().String())
	return b.Serve(ctx, MergeListeners(ln, tls.NewListener(tln, b.cfg.TLS)))
}

// MergeListeners returns a listener that accepts from every one of lns,
// so that one Serve takes plain and TLS clients alike; its Addr is the
// first one's, and Close closes them all.
func MergeListeners(lns ...net.Listener) net.Listener {
	m := &mergedListener{lns: lns, conns: make(chan acceptResult), done: make(chan struct{})}
	for _, ln := range lns {
		m.wg.Add(1)
		go m.accept(ln)
	}
	return m
}

type acceptResult struct {
	c   net.Conn
	err error
}

type mergedListener struct {
	lns   []net.Listener
	conns chan acceptResult
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func (m *mergedListener) accept(ln net.Listener) {
	defer m.wg.Done()
	for {
		c, err := ln.Accept()
		select {
		case m.conns <- acceptResult{c, err}:
		case <-m.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil && errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (m *mergedListener) Accept() (net.Conn, error) {
	select {
	case r := <-m.conns:
		return r.c, r.err
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *mergedListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		for _, ln := range m.lns {
			err = errors.Join(err, ln.Close())
		}
		m.wg.Wait()
	})
	return err
}

func (m *mergedListener) Addr() net.Addr { return m.lns[0].Addr() }

// Serve accepts client connections on ln until ctx is cancelled, then shuts
// down in this order: stop accepting (ln is closed), answer 503 to requests
// held for a backend, close idle client connections, let requests in flight
// finish for up to ShutdownTimeout, close what remains, close pooled backend
// connections. It returns after every
// goroutine it started has ended; the error is nil after a cancel.
func (b *Balancer) Serve(ctx context.Context, ln net.Listener) error {
	b.log.Info("serving", "addr", ln.Addr().String())
	janitorDone := make(chan struct{})
	janitorCtx, stopJanitor := context.WithCancel(context.Background())
	go func() {
		defer close(janitorDone)
		b.janitor(janitorCtx)
	}()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var acceptErr error
	var tempDelay time.Duration
	for {
		if !b.takeSlot(ctx) {
			break
		}
		c, err := ln.Accept()
		if err != nil {
			b.releaseSlot()
			if ctx.Err() != nil {
				break
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscallEMFILE) {
				if tempDelay == 0 {
					tempDelay = 5 * time.Millisecond
				} else if tempDelay *= 2; tempDelay > time.Second {
					tempDelay = time.Second
				}
				b.log.Warn("accept", "err", err, "retry_in", tempDelay)
				select {
				case <-time.After(tempDelay):
					continue
				case <-ctx.Done():
				}
				break
			}
			acceptErr = fmt.Errorf("accept: %w", err)
			ln.Close()
			break
		}
		tempDelay = 0
		b.startConn(c)
	}
	b.shutdown()
	stopJanitor()
	<-janitorDone
	b.closeAllIdle()
	return acceptErr
}

// takeSlot waits, with Config.MaxConns, until fewer connections than the
// bound are open, and takes a place for the next one; false when ctx ended
// first.
func (b *Balancer) takeSlot(ctx context.Context) bool {
	if b.slots == nil {
		return true
	}
	select {
	case b.slots <- struct{}{}:
		return true
	default:
	}
	if b.counters.limitWaits.Add(1) == 1 {
		b.log.Warn("client connections at -max-conns: new ones wait in the listen queue", "max_conns", b.cfg.MaxConns)
	}
	select {
	case b.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (b *Balancer) releaseSlot() {
	if b.slots != nil {
		<-b.slots
	}
}

func (b *Balancer) startConn(c net.Conn) {
	cc := newClientConn(b, c)
	b.connMu.Lock()
	b.clients[cc] = struct{}{}
	b.wg.Add(1)
	b.connMu.Unlock()
	b.counters.open.Add(1)
	b.counters.accepted.Add(1)
	go func() {
		defer func() {
			b.connMu.Lock()
			delete(b.clients, cc)
			b.connMu.Unlock()
			b.counters.open.Add(-1)
			b.releaseSlot()
			b.wg.Done()
		}()
		cc.serve()
	}()
}

func (b *Balancer) shutdown() {
	b.shutting.Store(true)
	b.closeOnce.Do(func() { close(b.closing) })
	if b.h2 != nil {
		b.h2.goAway()
	}
	deadline := time.Now().Add(b.cfg.ShutdownTimeout)
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b.closeClients(false)
		select {
		case <-done:
			return
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			b.closeClients(true)
			<-done
			return
		}
	}
}

// closeClients closes idle client connections, or all with force.
func (b *Balancer) closeClients(force bool) {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	for cc := range b.clients {
		if force || cc.state.Load() == stateIdle {
			cc.close()
		}
	}
}

// janitor closes pooled backend connections that idled too long, and those of
// removed backends.
func (b *Balancer) janitor(ctx context.Context) {
	period := b.cfg.UpstreamIdleTimeout / 4
	if period > time.Second {
		period = time.Second
	}
	if period < 10*time.Millisecond {
		period = 10 * time.Millisecond
	}
	t := time.NewTicker(period)
	defer t.Stop()
	var list []*backend
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := monoNow()
		b.applyMu.Lock()
		list = list[:0]
		for _, be := range b.backends {
			list = append(list, be)
		}
		kept := b.removed[:0]
		for _, be := range b.removed {
			list = append(list, be)
			if be.stats.inflight.Load() > 0 {
				kept = append(kept, be)
			}
		}
		clear(b.removed[len(kept):])
		b.removed = kept
		b.applyMu.Unlock()
		for _, be := range list {
			be.conns.closeIdle(now, int64(b.cfg.UpstreamIdleTimeout), be.removed.Load())
		}
	}
}

func (b *Balancer) closeAllIdle() {
	b.applyMu.Lock()
	list := make([]*backend, 0, len(b.backends)+len(b.removed))
	for _, be := range b.backends {
		list = append(list, be)
	}
	list = append(list, b.removed...)
	b.applyMu.Unlock()
	for _, be := range list {
		be.conns.closeIdle(0, 0, true)
	}
}
