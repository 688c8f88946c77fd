// Command hostscale-controller runs one node of the hostscale controller
// cluster: the replicated state (hashicorp/raft), the gRPC API and the
// admin HTTP endpoints.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hostscale/hostscale/controller/internal/alertconfig"
	"github.com/hostscale/hostscale/controller/internal/raftnode"
	"github.com/hostscale/hostscale/controller/server"
	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/config"
	"github.com/hostscale/hostscale/internal/logging"
	"github.com/hostscale/hostscale/internal/sighup"
	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	cfg, logOpts, id, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "hostscale-controller: %v\n", err)
		return 2
	}
	logger, err := logging.New(stderr, logOpts, "controller", "member", cfg.ID)
	if err != nil {
		fmt.Fprintf(stderr, "hostscale-controller: %v\n", err)
		return 2
	}
	cfg.Logger = logger
	hup := sighup.Notify()
	defer hup.Stop()
	srv, err := server.New(cfg)
	if err != nil {
		logger.Error("start failed", "err", err)
		fmt.Fprintf(stderr, "hostscale-controller: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go hup.Run(ctx, logger, tlsx.Reloader(id, logger), acl.Reloader(cfg.ACL, cfg.Token, logger))
	if err := srv.Run(ctx); err != nil {
		logger.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}

// parseFlags returns the server's config, the log options and, with TLS,
// the identity to reload on SIGHUP.
func parseFlags(args []string, stderr io.Writer) (server.Config, logging.Options, *tlsx.Identity, error) {
	cfg := server.DefaultConfig()
	var logOpts logging.Options
	fs := flag.NewFlagSet("hostscale-controller", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var peers string
	var showVersion bool
	fs.String(config.ConfigFlag, "", "read flags from this `file` of key = value lines (flags given on the command line win)")
	fs.StringVar(&cfg.ID, "id", "", "this server's id, unique in the cluster (required)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log, stable store and snapshots (required)")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "address of the gRPC API")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "address of the Raft transport, which also carries the calls followers forward to the leader")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "address of /metrics, /healthz and /readyz")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve /debug/pprof/ on the -http-addr address")
	fs.StringVar(&cfg.GRPCAdvertise, "grpc-advertise", "", "gRPC address other nodes and clients use, when it differs from -grpc-addr")
	fs.StringVar(&cfg.RaftAdvertise, "raft-advertise", "", "Raft address other nodes use, when it differs from -raft-addr")
	fs.StringVar(&peers, "peers", "", "bootstrap peers, this node included: id=raft-host:port,... (used only with an empty -data-dir; empty: join with AddMember)")
	fs.StringVar(&cfg.Raft.LogStore, "log-store", cfg.Raft.LogStore, "Raft log store: wal or boltdb")
	fs.DurationVar(&cfg.Raft.HeartbeatTimeout, "heartbeat-timeout", cfg.Raft.HeartbeatTimeout, "Raft heartbeat timeout: how long a follower waits for the leader before an election")
	fs.DurationVar(&cfg.Raft.ElectionTimeout, "election-timeout", cfg.Raft.ElectionTimeout, "Raft election timeout")
	fs.DurationVar(&cfg.Raft.LeaderLeaseTimeout, "leader-lease-timeout", cfg.Raft.LeaderLeaseTimeout, "Raft leader lease: a leader out of contact with a quorum this long steps down")
	fs.Uint64Var(&cfg.Raft.SnapshotThreshold, "snapshot-threshold", cfg.Raft.SnapshotThreshold, "take a snapshot after this many new log entries")
	fs.DurationVar(&cfg.Raft.SnapshotInterval, "snapshot-interval", cfg.Raft.SnapshotInterval, "how often to check whether a snapshot is due")
	fs.DurationVar(&cfg.HeartbeatTTL, "heartbeat-ttl", cfg.HeartbeatTTL, "a node whose agent sends nothing this long is marked down")
	fs.DurationVar(&cfg.MetricsWindow, "metrics-window", cfg.MetricsWindow, "sample history the leader keeps per node (one sample a second)")
	fs.DurationVar(&cfg.AlertInterval, "alert-interval", cfg.AlertInterval, "how often the leader evaluates the alerting rules")
	fs.DurationVar(&cfg.LogStallExit, "log-stall-exit", cfg.LogStallExit, "a leader whose Raft log store write (a stalled disk) has run this long exits, so that another controller leads; 0: never")
	fs.DurationVar(&cfg.CommitHold, "commit-hold", cfg.CommitHold, "under load, the longest the leader holds the next Raft entry for more writes (group commit); 0: never")
	fs.DurationVar(&cfg.ServerStabilization, "server-stabilization-time", cfg.ServerStabilization, "a controller added as a voter joins as a non-voter and is promoted once it has caught up and stayed healthy this long; 0 adds voters at once (0 to 1h)")
	fs.DurationVar(&cfg.DeadServerAfter, "dead-server-after", cfg.DeadServerAfter, "a promoted controller replaces a voter the leader has not reached this long, when more than three voters remain; 0: never (0, or 10s to 24h)")
	fs.DurationVar(&cfg.BalancerLostAfter, "balancer-lost-after", cfg.BalancerLostAfter, "a balancer that sent the leader no stats report this long is presumed gone and no longer holds back a pool's scale to zero (10s to 11m)")
	fs.DurationVar(&cfg.DrainDeadline, "drain-deadline", cfg.DrainDeadline, "how long a removed instance waits for every balancer to acknowledge a table without it before it is stopped anyway")
	var webhooks, deliveryFile string
	fs.StringVar(&deliveryFile, "alert-config", "", "JSON `file` of alert receivers and label routing (docs/controller.md); replaces -alert-webhook and -alertmanager")
	fs.StringVar(&webhooks, "alert-webhook", "", "comma-separated URLs that receive alert notifications (Alertmanager webhook payload, version 4)")
	fs.StringVar(&cfg.AlertmanagerURL, "alertmanager", "", "base URL of an Alertmanager to push alerts to (POST /api/v2/alerts)")
	fs.DurationVar(&cfg.AlertGroupWait, "alert-group-wait", cfg.AlertGroupWait, "how long a new alert group waits for more alerts before its first notification")
	fs.DurationVar(&cfg.AlertGroupInterval, "alert-group-interval", cfg.AlertGroupInterval, "how long a notified group waits before a notification about its changes (new or resolved alerts)")
	fs.DurationVar(&cfg.AlertRepeatInterval, "alert-repeat-interval", cfg.AlertRepeatInterval, "how often a still-firing group is notified again")
	var tlsFiles tlsx.Files
	httpTLS := fs.String("http-tls", tlsx.HTTPOff, "TLS `mode` of -http-addr: off (plaintext), on (HTTPS with -tls-cert, no client certificate asked) or verify (also require a client certificate of -tls-ca)")
	fs.StringVar(&tlsFiles.Cert, "tls-cert", "", "PEM `file` of this controller's certificate: the gRPC API serves TLS only, and the controller presents it when it calls the others (it must name the addresses clients dial, and allow server and client auth)")
	fs.StringVar(&tlsFiles.Key, "tls-key", "", "PEM `file` of the -tls-cert's private key")
	fs.BoolVar(&cfg.GRPC.AcceptPlaintext, "tls-accept-plaintext", false, "with -tls-cert, the gRPC API and the Raft port also take plaintext connections: the first and second steps of moving a running cluster to TLS")
	dialPlaintext := fs.Bool("tls-dial-plaintext", false, "with -tls-accept-plaintext, call the other controllers in plaintext: the first step of moving a running cluster to TLS")
	fs.StringVar(&tlsFiles.CA, "tls-ca", "", "PEM `file` of the CA that signs the clients' and the other controllers' certificates: the API then requires a client certificate it signed (mutual TLS)")
	aclFile := fs.String("acl-file", "", "`file` of ACL tokens (NAME ROLE[,ROLE...] SECRET lines; docs/controller.md): the gRPC API then admits only calls with one of them, in a role the method allows; SIGHUP reloads it")
	tokenFile := fs.String("token-file", "", "`file` holding this controller's own ACL token, sent with its calls to the other controllers (needs the operator role); SIGHUP reloads it")
	fs.IntVar(&cfg.GRPC.MaxRecvMessageSize, "max-message-size", cfg.GRPC.MaxRecvMessageSize, "largest gRPC message accepted, in bytes")
	fs.StringVar(&logOpts.Level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&logOpts.Format, "log-format", "text", "log format: text or json")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	if err := config.Parse(fs, args); err != nil {
		return cfg, logOpts, nil, err
	}
	if showVersion {
		fmt.Fprintln(stderr, "hostscale-controller", version.Version)
		return cfg, logOpts, nil, flag.ErrHelp
	}
	for _, u := range strings.Split(webhooks, ",") {
		if u = strings.TrimSpace(u); u == "" {
			continue
		}
		if err := checkURL(u); err != nil {
			return cfg, logOpts, nil, fmt.Errorf("-alert-webhook: %w", err)
		}
		cfg.AlertWebhooks = append(cfg.AlertWebhooks, u)
	}
	if cfg.AlertmanagerURL != "" {
		if err := checkURL(cfg.AlertmanagerURL); err != nil {
			return cfg, logOpts, nil, fmt.Errorf("-alertmanager: %w", err)
		}
	}
	if deliveryFile != "" {
		dc, err := alertconfig.Load(deliveryFile)
		if err != nil {
			return cfg, logOpts, nil, fmt.Errorf("-alert-config: %w", err)
		}
		cfg.AlertDelivery = &dc
	}
	id, err := tlsFiles.Load()
	if err != nil {
		return cfg, logOpts, nil, err
	}
	if id != nil {
		if cfg.GRPC.TLS, err = id.Server(); err != nil {
			return cfg, logOpts, nil, err
		}
		cfg.PeerTLS = id.Client
		cfg.Collectors = append(cfg.Collectors, tlsx.Collector(id))
	}
	switch {
	case cfg.GRPC.AcceptPlaintext && cfg.GRPC.TLS == nil:
		return cfg, logOpts, nil, errors.New("-tls-accept-plaintext: needs -tls-cert and -tls-key")
	case *dialPlaintext && !cfg.GRPC.AcceptPlaintext:
		return cfg, logOpts, nil, errors.New("-tls-dial-plaintext: needs -tls-accept-plaintext (a controller that takes only TLS is called with it, and calls the others with it)")
	case *dialPlaintext:
		cfg.PeerTLS = nil
	}
	if cfg.HTTPTLS, err = tlsx.HTTPServer(id, *httpTLS); err != nil {
		return cfg, logOpts, nil, err
	}
	if *aclFile != "" {
		if cfg.ACL, err = acl.OpenFile(*aclFile); err != nil {
			return cfg, logOpts, nil, fmt.Errorf("-acl-file: %w", err)
		}
	}
	if *tokenFile != "" {
		if cfg.Token, err = acl.ReadTokenFile(*tokenFile); err != nil {
			return cfg, logOpts, nil, fmt.Errorf("-token-file: %w", err)
		}
	}
	if err := server.CheckACL(cfg.ACL, cfg.Token); err != nil {
		return cfg, logOpts, nil, err
	}
	p, err := raftnode.ParsePeers(peers)
	if err != nil {
		return cfg, logOpts, nil, fmt.Errorf("-peers: %w", err)
	}
	cfg.Peers = p
	switch {
	case cfg.ID == "":
		return cfg, logOpts, nil, errors.New("-id: must be set")
	case cfg.DataDir == "":
		return cfg, logOpts, nil, errors.New("-data-dir: must be set")
	case cfg.Raft.LogStore != raftnode.StoreWAL && cfg.Raft.LogStore != raftnode.StoreBoltDB:
		return cfg, logOpts, nil, fmt.Errorf("-log-store: %q is not wal or boltdb", cfg.Raft.LogStore)
	case cfg.GRPC.MaxRecvMessageSize < 1024:
		return cfg, logOpts, nil, fmt.Errorf("-max-message-size: %d is below 1024", cfg.GRPC.MaxRecvMessageSize)
	case cfg.Raft.HeartbeatTimeout < 5*1e6 || cfg.Raft.ElectionTimeout < 5*1e6:
		return cfg, logOpts, nil, errors.New("-heartbeat-timeout and -election-timeout: at least 5ms")
	case cfg.HeartbeatTTL < 100*time.Millisecond:
		return cfg, logOpts, nil, errors.New("-heartbeat-ttl: at least 100ms")
	case cfg.MetricsWindow < time.Second || cfg.MetricsWindow > 24*time.Hour:
		return cfg, logOpts, nil, errors.New("-metrics-window: between 1s and 24h")
	case cfg.CommitHold < 0 || cfg.CommitHold > time.Second:
		return cfg, logOpts, nil, errors.New("-commit-hold: between 0 and 1s")
	case cfg.Raft.LeaderLeaseTimeout > cfg.Raft.HeartbeatTimeout:
		return cfg, logOpts, nil, errors.New("-leader-lease-timeout: must not exceed -heartbeat-timeout")
	}
	if err := server.CheckLogStallExit(cfg.LogStallExit); err != nil {
		return cfg, logOpts, nil, err
	}
	if err := server.CheckBalancerLostAfter(cfg.BalancerLostAfter); err != nil {
		return cfg, logOpts, nil, err
	}
	if err := server.CheckServerStabilization(cfg.ServerStabilization); err != nil {
		return cfg, logOpts, nil, err
	}
	if err := server.CheckDeadServerAfter(cfg.DeadServerAfter); err != nil {
		return cfg, logOpts, nil, err
	}
	if len(p) > 0 {
		found := false
		for _, x := range p {
			found = found || x.ID == cfg.ID
		}
		if !found {
			return cfg, logOpts, nil, fmt.Errorf("-peers: does not list this node's -id %q", cfg.ID)
		}
	}
	return cfg, logOpts, id, nil
}

// checkURL accepts absolute http and https URLs.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL", s)
	}
	return nil
}
