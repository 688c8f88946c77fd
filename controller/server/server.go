// Package server composes one hostscale controller: the Raft node and its
// state machine, the gRPC API, the admin HTTP endpoints, the leader loops,
// and the background work every node does (announcing its API address,
// probing the other members).
//
// It is the unit the hostscale-controller binary runs and the one tests
// start in-process.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hostscale/hostscale/controller/internal/agents"
	"github.com/hostscale/hostscale/controller/internal/alerts"
	"github.com/hostscale/hostscale/controller/internal/endpoint"
	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/controller/internal/lbstats"
	"github.com/hostscale/hostscale/controller/internal/leader"
	"github.com/hostscale/hostscale/controller/internal/raftmetrics"
	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/internal/scheduler"
	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/admin"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/logging"
	peerv1 "github.com/hostscale/hostscale/proto/hostscale/peer/v1"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Config is one controller's configuration.
type Config struct {
	ID      string
	DataDir string
	// Addresses to bind. A pre-bound listener, when set, is used instead.
	GRPCAddr, RaftAddr, HTTPAddr             string
	GRPCListener, RaftListener, HTTPListener net.Listener
	// Pprof serves net/http/pprof on the HTTP address.
	Pprof bool
	// HTTPTLS, when set, makes the HTTP address HTTPS only
	// (tlsx.HTTPServer).
	HTTPTLS *tls.Config
	// Addresses other nodes use to reach this one, when they differ from
	// the bound ones (e.g. binding 0.0.0.0).
	GRPCAdvertise, RaftAdvertise string
	// Peers bootstraps a new cluster; see raftnode.Config.Peers.
	Peers []raftnode.Peer
	// Raft holds the Raft timings and stores; ID, DataDir, Listener,
	// Advertise, Peers, NotifyCh and Logger are filled from the fields
	// above.
	Raft raftnode.Config
	// GRPC is the API server's transport policy; its TLS, when set, is
	// the API's (tlsx.Files.Server).
	GRPC grpcx.ServerConfig
	// Collectors are served on /metrics beside the controller's own (its
	// TLS certificate's expiry, say).
	Collectors []prometheus.Collector
	// PeerTLS gives, for each connection, how this controller calls the
	// other controllers' APIs and Raft ports (tlsx.Identity.Client); nil:
	// plaintext. Set it whenever GRPC.TLS is, but while the cluster moves
	// to TLS (GRPC.AcceptPlaintext on every controller, and this one
	// still calling the others in plaintext): the Raft port serves
	// GRPC.TLS too, and takes plaintext as GRPC.AcceptPlaintext says.
	PeerTLS func() *tls.Config
	// ACL, when set, makes the gRPC API admit only calls with a token of
	// this file, in a role ACLRules allows; nil admits every call.
	ACL *acl.File
	// TokenReapAfter is how long after it expired the leader deletes a
	// stored token; until then, ListTokens shows it.
	TokenReapAfter time.Duration
	// Token, when set, is sent with this controller's calls to the
	// others' APIs; with ACL set, it must hold the operator role.
	Token  *acl.TokenFile
	Logger *slog.Logger
	// ShutdownGrace bounds the graceful stop of the gRPC server.
	ShutdownGrace time.Duration
	// ProbeInterval is how often members probe each other's API.
	ProbeInterval time.Duration
	// HeartbeatTTL: a node whose agent sends nothing this long is marked
	// down.
	HeartbeatTTL time.Duration
	// MetricsWindow is how much sample history the leader keeps per node
	// (at one sample a second).
	MetricsWindow time.Duration
	// AlertInterval is how often the leader evaluates the alerting rules
	// and plans notifications.
	AlertInterval time.Duration
	// AlertWebhooks receive the Alertmanager webhook payload (version 4);
	// AlertmanagerURL, when set, is an Alertmanager to push alerts to.
	AlertWebhooks   []string
	AlertmanagerURL string
	// Grouping of notifications, as in Alertmanager's route.
	AlertGroupWait, AlertGroupInterval, AlertRepeatInterval time.Duration
	// DrainDeadline: an instance out of the tables is stopped once every
	// balancer acknowledged a table without it, or after this long.
	DrainDeadline time.Duration
	// ServerStabilization: a controller added as a voter joins as a
	// non-voter, which the leader promotes once it has caught up and
	// stayed healthy this long; 0 adds voters at once.
	ServerStabilization time.Duration
	// DeadServerAfter: a promoted controller replaces a voter this leader
	// has not reached for this long, when more than three voters remain;
	// 0 never.
	DeadServerAfter time.Duration
	// BalancerLostAfter: a balancer that sent the leader no stats report
	// for this long is presumed gone, and no longer holds back a pool's
	// scale to zero.
	BalancerLostAfter time.Duration
	// LogStallExit: a leader whose Raft log store write has run this long
	// exits, so that another controller leads; 0: never.
	LogStallExit time.Duration
	// Exit ends the process (os.Exit when nil), with code 3 when this node
	// gives up: LogStallExit passed, or Raft's term could not be saved.
	Exit func(code int)
	// CommitHold: under load, the longest the leader holds the next Raft
	// entry for more writes (group commit); 0 never holds.
	CommitHold time.Duration
	// AlertDelivery, when set, replaces the receivers and routing built
	// from the fields above (see the alertconfig package).
	AlertDelivery *alerts.DispatchConfig
}

// BalancerKeep is how long the leader keeps a balancer's stats reports,
// and remembers a balancer that sends none.
const BalancerKeep = 11 * time.Minute

// CheckBalancerLostAfter checks -balancer-lost-after: from 10s, past a
// report's freshness, to BalancerKeep.
func CheckBalancerLostAfter(d time.Duration) error {
	if d < 10*time.Second || d > BalancerKeep {
		return fmt.Errorf("-balancer-lost-after: between 10s and %v", BalancerKeep)
	}
	return nil
}

// CheckServerStabilization checks -server-stabilization-time: 0 (voters
// join at once) to 1h.
func CheckServerStabilization(d time.Duration) error {
	if d < 0 || d > time.Hour {
		return errors.New("-server-stabilization-time: between 0 and 1h")
	}
	return nil
}

// CheckDeadServerAfter checks -dead-server-after: 0 (never) or 10s to 24h.
func CheckDeadServerAfter(d time.Duration) error {
	if d != 0 && (d < 10*time.Second || d > 24*time.Hour) {
		return errors.New("-dead-server-after: 0 (never) or between 10s and 24h")
	}
	return nil
}

// DefaultConfig returns the defaults of the hostscale-controller flags.
func DefaultConfig() Config {
	return Config{
		GRPCAddr:            "127.0.0.1:7700",
		RaftAddr:            "127.0.0.1:7701",
		HTTPAddr:            "127.0.0.1:7702",
		Raft:                raftnode.DefaultConfig(),
		GRPC:                grpcx.DefaultServerConfig(),
		ShutdownGrace:       5 * time.Second,
		ProbeInterval:       time.Second,
		HeartbeatTTL:        10 * time.Second,
		MetricsWindow:       5 * time.Minute,
		AlertInterval:       5 * time.Second,
		DrainDeadline:       10 * time.Second,
		TokenReapAfter:      time.Hour,
		CommitHold:          10 * time.Millisecond,
		BalancerLostAfter:   time.Minute,
		ServerStabilization: 10 * time.Second,
		DeadServerAfter:     2 * time.Minute,
		LogStallExit:        15 * time.Second,
		Exit:                os.Exit,

		AlertGroupWait:      10 * time.Second,
		AlertGroupInterval:  5 * time.Minute,
		AlertRepeatInterval: 4 * time.Hour,
	}
}

// Validate reports the first unusable field.
func (c Config) Validate() error {
	if c.ID == "" {
		return errors.New("-id: must be set")
	}
	if c.DataDir == "" {
		return errors.New("-data-dir: must be set")
	}
	if c.ProbeInterval <= 0 || c.ShutdownGrace <= 0 {
		return errors.New("probe interval and shutdown grace must be positive")
	}
	if c.HeartbeatTTL < 100*time.Millisecond {
		return errors.New("-heartbeat-ttl: at least 100ms")
	}
	if c.AlertInterval < 10*time.Millisecond {
		return errors.New("-alert-interval: at least 10ms")
	}
	if _, err := alerts.NewDispatcher(dispatchConfig(c)); err != nil {
		return fmt.Errorf("alert delivery: %w", err)
	}
	if c.DrainDeadline < 0 || c.DrainDeadline > time.Hour {
		return errors.New("-drain-deadline: between 0 and 1h")
	}
	if err := CheckBalancerLostAfter(c.BalancerLostAfter); err != nil {
		return err
	}
	if err := CheckServerStabilization(c.ServerStabilization); err != nil {
		return err
	}
	if err := CheckDeadServerAfter(c.DeadServerAfter); err != nil {
		return err
	}
	if c.CommitHold < 0 || c.CommitHold > time.Second {
		return errors.New("-commit-hold: between 0 and 1s")
	}
	if err := CheckLogStallExit(c.LogStallExit); err != nil {
		return err
	}
	if c.MetricsWindow < time.Second || c.MetricsWindow > 24*time.Hour {
		return errors.New("-metrics-window: between 1s and 24h")
	}
	if c.TokenReapAfter <= 0 {
		return errors.New("token reap delay must be positive")
	}
	if err := CheckACL(c.ACL, c.Token); err != nil {
		return err
	}
	return c.GRPC.Validate()
}

// CheckACL checks that a controller enforcing ACLs has a token of its own
// for its calls to the others, and that its ACL file grants that token the
// operator role: the others, with the same file, would refuse it otherwise.
func CheckACL(f *acl.File, own *acl.TokenFile) error {
	if f == nil {
		return nil
	}
	if own == nil {
		return errors.New("-acl-file: needs -token-file, this controller's own token (with the operator role) for its calls to the other controllers")
	}
	tok, ok := f.Tokens().Lookup(own.Token())
	switch {
	case !ok:
		return fmt.Errorf("-token-file: %s holds no token of -acl-file %s", own.Path(), f.Path())
	case !ACLRules.Admits(tok, forwardMethod):
		return fmt.Errorf("-token-file: token %q of -acl-file %s has roles %v; a controller's own token needs operator", tok.Name, f.Path(), tok.Roles)
	}
	return nil
}

// Server is one running controller.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	registry *prometheus.Registry
	fsm      *fsm.FSM
	node     *raftnode.Node
	grpc     *grpcx.Server
	grpcLis  net.Listener
	admin    *admin.Server
	leader   *leader.Manager
	core     *endpoint.Core
	conns    *grpcx.ConnPool
	// stopForwards ends the calls followers forwarded to the Raft port.
	stopForwards context.CancelFunc
	hub          *agents.Hub
	acks         *endpoint.TableAcks
	lbstats      *lbstats.Store
	// unplaced holds, on the leader, the pools its scheduler found no
	// node for (GetUnplaced).
	unplaced scheduler.Unplaced
	notifyCh chan bool
	// running is set once Run starts: every field is set by then.
	running atomic.Bool

	reachMu sync.Mutex
	reached map[string]time.Time

	// detachRaftMetrics stops Raft's reports reaching registry.
	detachRaftMetrics func()
}

// New binds the listeners, opens the Raft stores and starts Raft. Call Run
// to serve; if Run is never called, Close releases what New took.
func New(cfg Config) (s *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("-data-dir: %w", err)
	}
	logger := logging.OrDiscard(cfg.Logger)
	s = &Server{
		cfg:      cfg,
		logger:   logger,
		registry: admin.NewRegistry(),
		fsm:      fsm.New(logger),
		conns:    grpcx.NewConnPool(grpcx.WithTLSFunc(cfg.PeerTLS), acl.WithToken(cfg.Token)),
		notifyCh: make(chan bool, 1),
		reached:  map[string]time.Time{},
	}
	var toClose []func()
	defer func() {
		if err != nil {
			for i := len(toClose) - 1; i >= 0; i-- {
				toClose[i]()
			}
		}
	}()
	listen := func(flag, addr string, l net.Listener) (net.Listener, error) {
		if l != nil {
			return l, nil
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flag, err)
		}
		toClose = append(toClose, func() { l.Close() })
		return l, nil
	}
	if s.grpcLis, err = listen("-grpc-addr", cfg.GRPCAddr, cfg.GRPCListener); err != nil {
		return nil, err
	}
	raftLis, err := listen("-raft-addr", cfg.RaftAddr, cfg.RaftListener)
	if err != nil {
		return nil, err
	}
	httpLis, err := listen("-http-addr", cfg.HTTPAddr, cfg.HTTPListener)
	if err != nil {
		return nil, err
	}
	adminOpts := admin.Options{Ready: s.ready, Pprof: cfg.Pprof, TLS: cfg.HTTPTLS}
	// With ACLs, one authorizer checks the gRPC API's calls and the HTTP
	// endpoints': /metrics needs a read token, as Consul's agent metrics
	// do, and pprof an operator's.
	var az *acl.Authorizer
	if cfg.ACL != nil {
		az = &acl.Authorizer{Lookup: lookupToken(cfg.ACL, s.fsm), Rules: ACLRules}
		adminOpts.Guard = func(path string, h http.Handler) http.Handler {
			if path == "/metrics" {
				return az.HTTP(acl.Read, h)
			}
			return az.HTTP(acl.Operator, h)
		}
	}
	s.admin = admin.New(httpLis, s.registry, adminOpts)

	// Raft's own timers and counters, attached before Raft starts so that
	// its first state change counts.
	s.detachRaftMetrics = raftmetrics.New(s.registry).Attach()
	toClose = append(toClose, s.detachRaftMetrics)

	rc := cfg.Raft
	rc.ID, rc.DataDir, rc.Listener, rc.Advertise, rc.Peers = cfg.ID, cfg.DataDir, raftLis, cfg.RaftAdvertise, cfg.Peers
	rc.TLS, rc.PeerTLS = cfg.GRPC.TLS, cfg.PeerTLS
	// A cluster moving to TLS: count what still comes in plaintext, so
	// that an operator knows when to stop taking it.
	plaintext := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hostscale_controller_plaintext_connections_total",
		Help: "Connections taken in plaintext on a port that serves TLS (-tls-accept-plaintext), by port (grpc, raft).",
	}, []string{"port"})
	s.registry.MustRegister(plaintext)
	rc.AcceptPlaintext = cfg.GRPC.AcceptPlaintext
	rc.OnPlaintext = plaintext.WithLabelValues("raft").Inc
	// With ACLs, the Raft port takes only connections that present a
	// token fit for the controllers' forwarding (operator): every
	// controller presents its own.
	rc.PeerToken = cfg.Token.Token
	if cfg.ACL != nil {
		rc.Authenticate = raftPortAuthenticator(az.Lookup)
		refused := prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_controller_raft_refused_connections_total",
			Help: "Connections the Raft port refused for want of a controller's token (-acl-file).",
		})
		s.registry.MustRegister(refused)
		rl := &refusalLog{logger: logger, every: 10 * time.Second}
		rc.Refused = func(from net.Addr, err error) {
			refused.Inc()
			rl.log(from, err)
		}
	}
	rc.NotifyCh, rc.Logger = s.notifyCh, logger
	rc.StableStoreFailed = func(err error) {
		s.giveUp("the Raft stable store could not save the term or vote: exiting, as Raft cannot go on without it", "err", err)
	}
	if s.node, err = raftnode.New(rc, s.fsm); err != nil {
		return nil, err
	}
	toClose = append(toClose, func() { s.node.Close() })

	gc := cfg.GRPC
	gc.Logger, gc.Registerer = logger, s.registry
	gc.OnPlaintext = plaintext.WithLabelValues("grpc").Inc
	gc.Audit = audited
	if cfg.ACL != nil {
		gc.Authorize = az.Authorize
		s.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hostscale_controller_acl_tokens",
			Help: "Tokens in the ACL file in force (-acl-file).",
		}, func() float64 { return float64(cfg.ACL.Tokens().Len()) }))
	}
	if s.grpc, err = grpcx.NewServer(gc, grpc.ChainUnaryInterceptor(poolScopeInterceptor)); err != nil {
		return nil, err
	}
	metrics := endpoint.NewMetrics(s.registry)
	s.core = &endpoint.Core{
		ID:           cfg.ID,
		APIAddr:      s.APIAddr(),
		Raft:         s.node.Raft,
		FSM:          s.fsm,
		Conns:        s.conns,
		ApplyTimeout: 10 * time.Second,
		CommitHold:   cfg.CommitHold,
		Logger:       logger,
		Metrics:      metrics,
		Forwarder: endpoint.NewForwarder(endpoint.ForwarderOptions{
			ID: cfg.ID, Conns: s.conns, MaxMessageSize: maxMessageSize(cfg.GRPC), Metrics: metrics, RaftTLS: cfg.PeerTLS,
			RaftToken: cfg.Token.Token,
		}),
		LogTrouble: s.logTrouble,
	}
	s.hub = agents.NewHub(int(cfg.MetricsWindow / time.Second))
	s.acks = endpoint.NewTableAcks()
	s.lbstats = lbstats.New(BalancerKeep)
	s.lbstats.Lost = cfg.BalancerLostAfter
	const membershipTimeout = 10 * time.Second
	promoter := &endpoint.Promoter{
		Core: s.core, Stabilization: cfg.ServerStabilization, MembershipTimeout: membershipTimeout, Interval: cfg.ProbeInterval, Logger: logger,
		LastReached: s.lastReached, DeadAfter: cfg.DeadServerAfter,
	}
	s.leader = leader.NewManager(s.node.Raft, s.notifyCh, logger, &agents.Liveness{
		Hub:       s.hub,
		TTL:       cfg.HeartbeatTTL,
		Nodes:     s.nodeStatuses,
		SetStatus: s.setNodeStatus,
		Logger:    logger,
	}, leader.LoopFunc{N: "alerts", F: s.evaluateAlerts}, leader.LoopFunc{N: "notifier", F: s.notifyAlerts},
		s.schedulerLoop(), leader.LoopFunc{N: "autoscaler", F: s.runAutoscaler},
		leader.LoopFunc{N: "promoter", F: promoter.Run}, leader.LoopFunc{N: "token-reaper", F: s.reapTokens})
	s.core.LeaderReady = s.leader.Ready
	// Every service is served directly and through the leader's end of
	// the followers' Forward streams.
	peer := endpoint.NewPeer(logger)
	peer.MaxMessageSize = maxMessageSize(cfg.GRPC)
	peer.Metrics = metrics
	register := func(desc *grpc.ServiceDesc, impl any) {
		s.grpc.RegisterService(desc, impl)
		peer.Register(desc, impl)
	}
	cluster := &endpoint.Cluster{
		Core:              s.core,
		LastReached:       s.lastReached,
		MembershipTimeout: membershipTimeout,
		Stabilization:     cfg.ServerStabilization,
		Promotion:         promoter.Why,
	}
	register(&pb.ClusterService_ServiceDesc, cluster)
	s.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hostscale_controller_failure_tolerance",
		Help: "How many more voters can fail before the cluster stops committing, in this node's view: the voters it reaches, itself included, less a quorum.",
	}, func() float64 {
		n, err := cluster.FailureTolerance()
		if err != nil {
			return 0
		}
		return float64(n)
	}))
	tokens := &endpoint.Tokens{Core: s.core}
	if cfg.ACL != nil {
		tokens.File = cfg.ACL.Tokens
	}
	register(&pb.TokenService_ServiceDesc, tokens)
	register(&pb.PoolService_ServiceDesc, &endpoint.Pools{Core: s.core, Traffic: s.lbstats, Unplaced: s.unplaced.Pools, Leading: s.leader.Ready})
	register(&pb.AgentService_ServiceDesc, &endpoint.Agents{
		Core:          s.core,
		Hub:           s.hub,
		LeaderContext: s.leader.Context,
		HeartbeatTTL:  cfg.HeartbeatTTL,
		MaxBatch:      endpoint.DefaultMaxBatch,
		MaxFuture:     endpoint.DefaultMaxFuture,
	})
	balancers := &endpoint.Balancers{Core: s.core, Acks: s.acks, Stats: s.lbstats}
	register(&pb.BalancerService_ServiceDesc, balancers)
	s.registry.MustRegister(balancers.Collector(s.leader.Ready))
	register(&pb.NodeService_ServiceDesc, &endpoint.Nodes{Core: s.core, Hub: s.hub, Leading: s.leader.Ready})
	register(&pb.AlertService_ServiceDesc, &endpoint.Alerts{Core: s.core})
	register(&pb.MetricsService_ServiceDesc, &endpoint.MetricsQueries{Core: s.core, Hub: s.hub, Leading: s.leader.Ready, Window: cfg.MetricsWindow})
	peerv1.RegisterPeerServiceServer(s.grpc, peer)
	forwardCtx, stopForwards := context.WithCancel(context.Background())
	s.stopForwards = stopForwards
	s.node.ServeForwards(func(conn net.Conn) { peer.ServeConn(forwardCtx, conn) })
	s.registry.MustRegister(cfg.Collectors...)
	s.registry.MustRegister(newRaftCollector(s.node.Raft, s.fsm, s.node.LogWriteInProgress, s.node.LogWritesFailing))
	s.registry.MustRegister(newConditionCollector(s.hub))
	return s, nil
}

// APIAddr is the gRPC address other nodes and clients use.
func (s *Server) APIAddr() string {
	if s.cfg.GRPCAdvertise != "" {
		return s.cfg.GRPCAdvertise
	}
	return s.grpcLis.Addr().String()
}

// RaftAddr is the Raft transport's advertised address.
func (s *Server) RaftAddr() string { return string(s.node.Transport.LocalAddr()) }

// HTTPAddr is the admin HTTP address.
func (s *Server) HTTPAddr() string { return s.admin.Addr().String() }

// logTrouble is how long the writes to the Raft log store have been stuck
// (one running) or failing (in a row), the longer of the two, and what it
// is; zero and "" when they go through.
func (s *Server) logTrouble() (time.Duration, string) {
	stuck := s.node.LogWriteInProgress()
	failing, err := s.node.LogWritesFailing()
	switch {
	case stuck > 0 && stuck >= failing:
		return stuck, fmt.Sprintf("a write to the Raft log store has run for %v: the disk is stalled", stuck.Round(time.Second))
	case failing > 0:
		return failing, fmt.Sprintf("writes to the Raft log store have failed for %v: %v", failing.Round(time.Second), err)
	}
	return 0, ""
}

// ready is /readyz: a leader is known, on the leader it caught up, and the
// writes to the log store have been neither stuck nor failing for
// raftnode.LogWriteStallLimit.
func (s *Server) ready() error {
	if d, what := s.logTrouble(); d > raftnode.LogWriteStallLimit {
		return errors.New(what)
	}
	if _, id := s.node.LeaderWithID(); id == "" {
		return errors.New("no leader known")
	}
	if s.core.IsLeader() && !s.leader.Ready() {
		return errors.New("leader is catching up")
	}
	return nil
}

// Run serves until ctx is cancelled, then shuts down in this order: the
// gRPC server stops taking calls and drains (ShutdownGrace at most), the
// background loops stop, Raft shuts down, and the stores close.
func (s *Server) Run(ctx context.Context) error {
	s.logger.Info("controller started", "grpc", s.APIAddr(), "raft", s.RaftAddr(), "http", s.HTTPAddr(), "data_dir", s.cfg.DataDir)
	s.running.Store(true)
	g, gctx := errgroup.WithContext(ctx)
	loopCtx, stopLoops := context.WithCancel(context.Background())
	g.Go(func() error { return s.grpc.Serve(gctx, s.grpcLis, s.cfg.ShutdownGrace) })
	g.Go(func() error { return s.admin.Run(gctx) })
	var loops sync.WaitGroup
	for _, f := range []func(context.Context){
		func(c context.Context) { _ = s.leader.Run(c) },
		s.announce,
		s.probe,
		s.watchLogStall,
	} {
		loops.Add(1)
		go func() { defer loops.Done(); f(loopCtx) }()
	}
	s.grpc.Health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	err := g.Wait()
	stopLoops()
	loops.Wait()
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	s.logger.Info("controller stopped")
	return err
}

// CheckLogStallExit accepts 0 (never) or 1s to 1h for -log-stall-exit.
func CheckLogStallExit(d time.Duration) error {
	if d != 0 && (d < time.Second || d > time.Hour) {
		return errors.New("-log-stall-exit: 0 (never) or between 1s and 1h")
	}
	return nil
}

// watchLogStall ends the process when this node leads and a write to its
// Raft log store has run for LogStallExit. hashicorp/raft's leader loop
// waits in that write: the cluster commits nothing, yet the leader's
// heartbeats go on and no other node stands for election. Once the process
// is gone (its threads, at least, when the write holds one in the kernel),
// the heartbeats stop, the others elect a leader within about a second,
// and agents and balancers move to them.
func (s *Server) watchLogStall(ctx context.Context) {
	if s.cfg.LogStallExit <= 0 {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		stalled := s.node.LogWriteInProgress()
		if stalled < s.cfg.LogStallExit || !s.core.IsLeader() {
			continue
		}
		s.giveUp("the Raft log store has not finished a write: exiting so that another controller leads",
			"stalled", stalled.Round(time.Second), "limit", s.cfg.LogStallExit)
		return
	}
}

// giveUp logs msg with args and the data directory, closes this node's
// ports (disconnect) and ends the process with code 3 (Config.Exit).
func (s *Server) giveUp(msg string, args ...any) {
	s.logger.Error(msg, append(args, "data_dir", s.cfg.DataDir)...)
	if s.running.Load() {
		s.disconnect(time.Second)
	}
	exit := s.cfg.Exit
	if exit == nil {
		exit = os.Exit
	}
	exit(3)
}

// disconnect closes the gRPC, admin HTTP and Raft listeners and the
// connections on them, and ends the calls under way, waiting at most d. A
// process whose disk holds one of its threads in a write cannot finish
// exiting until the disk answers, and its sockets stay open that long:
// agents, balancers and clients would wait on a node nobody serves (for an
// answer, a keepalive, a Hello) instead of being refused and going to
// another controller at once.
func (s *Server) disconnect(d time.Duration) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.grpc.Stop()
		s.admin.Close()
		s.node.Disconnect()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.logger.Warn("closing connections before exiting took too long", "limit", d)
	}
}

// Close shuts Raft down and closes its stores and client connections. Run
// calls it on the way out.
func (s *Server) Close() error {
	if s.stopForwards != nil {
		s.stopForwards()
	}
	err := s.node.Close()
	s.detachRaftMetrics()
	s.core.Forwarder.Close()
	_ = s.conns.Close()
	return err
}

// maxMessageSize is the largest message the API takes or sends, which
// bounds a forwarded call's request and answer too.
func maxMessageSize(c grpcx.ServerConfig) int {
	if n := max(c.MaxRecvMessageSize, c.MaxSendMessageSize); n > 0 {
		return n
	}
	return grpcx.DefaultMaxMessageSize
}
