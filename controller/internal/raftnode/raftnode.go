// Package raftnode builds a controller's hashicorp/raft instance: the
// durable log store, the file snapshot store, the TCP transport, and the
// bootstrap from a peer list. It owns no state machine logic.
package raftnode

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/hostscale/hostscale/internal/logging"
)

// Log store kinds.
const (
	StoreWAL    = "wal"
	StoreBoltDB = "boltdb"
)

// Peer is one server of the bootstrap configuration.
type Peer struct {
	ID      string
	Address string
}

// ParsePeers parses "id=host:port,id=host:port".
func ParsePeers(s string) ([]Peer, error) {
	var peers []Peer
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		id, addr, ok := strings.Cut(item, "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("peer %q: want id=host:port", item)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %q: address: %w", item, err)
		}
		if seen[id] {
			return nil, fmt.Errorf("peer %q: id %q listed twice", item, id)
		}
		seen[id] = true
		peers = append(peers, Peer{ID: id, Address: addr})
	}
	return peers, nil
}

// Config describes one Raft server.
type Config struct {
	ID      string
	DataDir string
	// Listener is the bound Raft listener; Advertise is the address the
	// other servers dial (default: the listener's address).
	Listener  net.Listener
	Advertise string
	// TLS, when set, is spoken on every connection the Raft port accepts
	// (tlsx.Files.Server, which with a CA refuses peers without a
	// certificate it signed), and the configuration PeerTLS returns on
	// every one this server dials (tlsx.Identity.Client, called for each
	// connection so that a reloaded CA holds): Raft's RPCs and the
	// forwarded calls alike.
	TLS     *tls.Config
	PeerTLS func() *tls.Config
	// AcceptPlaintext, with TLS, also takes connections that do not open
	// with a TLS handshake, in plaintext (a cluster moving to TLS);
	// OnPlaintext, when set, is called for each.
	AcceptPlaintext bool
	OnPlaintext     func()
	// PeerToken, when set, gives the token this server presents on every
	// connection it opens to a peer's Raft port, for Raft's RPCs and
	// forwarded calls alike ("": none), read again for each connection.
	PeerToken func() string
	// Authenticate, when set, makes the Raft port take only connections
	// that present a token it returns nil for; Refused, when set, is
	// called with each refused connection's address and why.
	Authenticate func(token string) error
	Refused      func(from net.Addr, err error)
	// Peers is the bootstrap configuration, this server included. It is
	// used only when the data directory holds no Raft state. Empty: the
	// server waits to be added to an existing cluster.
	Peers []Peer
	// LogStore is StoreWAL (default) or StoreBoltDB.
	LogStore string
	// LogCache is the number of recent entries kept in memory in front of
	// the log store (0 disables the cache).
	LogCache int

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	MaxAppendEntries   int
	SnapshotInterval   time.Duration
	SnapshotThreshold  uint64
	TrailingLogs       uint64
	SnapshotRetain     int

	// NotifyCh receives true on gaining and false on losing leadership.
	NotifyCh chan<- bool
	Logger   *slog.Logger
	// StableStoreFailed, when set, is called with the error of a write to
	// the stable store (Raft's term and vote) that failed, before Raft
	// sees it. Raft cannot go on without saving its term (hashicorp/raft
	// panics), so a server ends the process there, saying why.
	StableStoreFailed func(error)
}

// DefaultConfig returns the timings used on a LAN or loopback.
func DefaultConfig() Config {
	return Config{
		LogStore:           StoreWAL,
		LogCache:           512,
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		MaxAppendEntries:   512,
		SnapshotInterval:   120 * time.Second,
		SnapshotThreshold:  8192,
		TrailingLogs:       10240,
		SnapshotRetain:     3,
	}
}

// Validate reports the first unusable field.
func (c Config) Validate() error {
	switch {
	case c.ID == "":
		return errors.New("raft: id must not be empty")
	case c.DataDir == "":
		return errors.New("raft: data dir must not be empty")
	case c.Listener == nil:
		return errors.New("raft: listener must be set")
	case c.LogStore != StoreWAL && c.LogStore != StoreBoltDB:
		return fmt.Errorf("raft: log store %q is not %q or %q", c.LogStore, StoreWAL, StoreBoltDB)
	}
	if len(c.Peers) > 0 {
		found := false
		for _, p := range c.Peers {
			found = found || p.ID == c.ID
		}
		if !found {
			return fmt.Errorf("raft: -peers does not list this server's id %q", c.ID)
		}
	}
	return nil
}

// Node is a running Raft server with its stores.
type Node struct {
	*raft.Raft
	Transport *raft.NetworkTransport
	Snapshots raft.SnapshotStore
	closers   []io.Closer
	stream    *streamLayer
	logs      *watchedLogs
}

// LogWriteInProgress is how long the log store's oldest write still
// running has run, or zero when none runs.
func (n *Node) LogWriteInProgress() time.Duration { return n.logs.inProgress() }

// LogWritesFailing is how long the writes to the durable log store have
// failed in a row, from the start of the first, and the last one's error;
// zero and nil once one succeeded. A follower whose disk answers with
// errors (full, read-only, dying) still hears the leader's heartbeats, but
// stores no entry, so its state stays as it was.
func (n *Node) LogWritesFailing() (time.Duration, error) { return n.logs.failing() }

// ServeForwards makes the Raft port take calls forwarded by followers
// (connections opened with DialForward): h runs once per connection, after
// the handshake, and must return when the connection is closed, which
// Close does. Until it is set, forwarding connections are refused.
func (n *Node) ServeForwards(h func(net.Conn)) { n.stream.forward.Store(&h) }

// New opens the stores under cfg.DataDir, starts Raft with fsm, and
// bootstraps the cluster from cfg.Peers when the stores are empty.
func New(cfg Config, fsm raft.FSM) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hl := logging.HCLog(cfg.Logger, "raft")
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hl
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.MaxAppendEntries = cfg.MaxAppendEntries
	rc.BatchApplyCh = true
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	rc.NotifyCh = cfg.NotifyCh
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}

	n := &Node{}
	ok := false
	defer func() {
		if !ok {
			n.closeStores()
		}
	}()
	durable, stable, err := openStores(cfg, &n.closers)
	if err != nil {
		return nil, err
	}
	n.logs = newWatchedLogs(durable)
	var logs raft.LogStore = n.logs
	if cfg.LogCache > 0 {
		if logs, err = raft.NewLogCache(cfg.LogCache, logs); err != nil {
			return nil, fmt.Errorf("log cache: %w", err)
		}
	}
	logs = typedLogs{LogStore: logs, durable: n.logs}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, cfg.SnapshotRetain, hl.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	n.Snapshots = snaps

	var adv net.Addr = cfg.Listener.Addr()
	if cfg.Advertise != "" {
		// Kept as given: a host name stays a name that peers resolve when
		// they dial, so a container whose address changes keeps working.
		if _, _, err := net.SplitHostPort(cfg.Advertise); err != nil {
			return nil, fmt.Errorf("raft advertise address %q: %w", cfg.Advertise, err)
		}
		adv = advertiseAddr(cfg.Advertise)
	}
	n.stream = newStreamLayer(cfg.Listener, adv, layerOptions{
		silence: firstByteTimeout, serverTLS: cfg.TLS, clientTLS: cfg.PeerTLS,
		acceptPlain: cfg.AcceptPlaintext, onPlain: cfg.OnPlaintext,
		token: cfg.PeerToken, authenticate: cfg.Authenticate, refused: cfg.Refused,
	})
	n.Transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  n.stream,
		MaxPool: 3,
		// No pipelined replication. When a follower refuses an entry or
		// answers with a newer term, Raft's pipeline decoder exits while
		// its sender may still send; with nothing draining the
		// pipeline's unbuffered channels, the sender blocks for ever:
		// that follower gets heartbeats but no more entries, and
		// Raft.Shutdown never returns (seen here in the partition
		// tests; grafana/pyroscope#5518). One AppendEntries at a time
		// per follower measured the same for bare Raft and within 10 %
		// for the API with 64 clients (docs/benchmarks.md).
		MaxRPCsInFlight: 1,
		Timeout:         10 * time.Second,
		Logger:          hl.Named("transport"),
	})
	n.closers = append(n.closers, n.Transport)

	if cfg.StableStoreFailed != nil {
		stable = checkedStable{StableStore: stable, failed: cfg.StableStoreFailed}
	}
	existing, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return nil, fmt.Errorf("inspect raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, fsm, logs, stable, snaps, n.Transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.Raft = r
	if !existing && len(cfg.Peers) > 0 {
		var servers []raft.Server
		for _, p := range cfg.Peers {
			addr := p.Address
			if p.ID == cfg.ID {
				addr = adv.String()
			}
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(addr)})
		}
		if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			_ = r.Shutdown().Error()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	ok = true
	return n, nil
}

func openStores(cfg Config, closers *[]io.Closer) (raft.LogStore, raft.StableStore, error) {
	var logs raft.LogStore
	var stable raft.StableStore
	switch cfg.LogStore {
	case StoreBoltDB:
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("data dir: %w", err)
		}
		db, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
		if err != nil {
			return nil, nil, fmt.Errorf("open boltdb log store: %w", err)
		}
		*closers = append(*closers, db)
		logs, stable = db, db
	default:
		dir := filepath.Join(cfg.DataDir, "wal")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("data dir: %w", err)
		}
		// The WAL does not close the metadata database it opens itself
		// (hashicorp/raft-wal#28): open it here and close it after the WAL,
		// so that a node can be reopened in the same process.
		meta := &metadb.BoltMetaDB{}
		*closers = append(*closers, meta)
		w, err := raftwal.Open(dir, raftwal.WithLogger(logging.HCLog(cfg.Logger, "wal")), raftwal.WithMetaStore(meta))
		if err != nil {
			return nil, nil, fmt.Errorf("open wal log store: %w", err)
		}
		*closers = append(*closers, w)
		logs, stable = w, w
	}
	return logs, stable, nil
}

// Disconnect closes the Raft port and the connections on it that this
// node opened or serves calls on, without waiting for the goroutines using
// them: for a process about to exit that may not finish exiting, as one
// whose disk holds a write does, so that its peers are refused at once
// instead of waiting on connections nobody serves.
func (n *Node) Disconnect() {
	if n.stream != nil {
		n.stream.disconnect()
	}
}

// Close ends the calls forwarded to this node, then shuts Raft down and
// closes the transport and the stores, in that order: a forwarded call may
// wait on Raft, and Raft must stop using the stores before they close.
func (n *Node) Close() error {
	if n.stream != nil {
		n.stream.stopForwards()
	}
	var err error
	if n.Raft != nil {
		f := n.Raft.Shutdown()
		done := make(chan error, 1)
		go func() { done <- f.Error() }()
		select {
		case err = <-done:
		case <-time.After(shutdownGrace):
			// Replication to a peer that stopped answering holds the
			// shutdown in a dial or a read: end them.
			if n.stream != nil {
				n.stream.stopDials()
			}
			err = <-done
		}
	}
	n.closeStores()
	return err
}

// shutdownGrace is how long Close lets Raft shut down with its
// connections to the peers open, before it closes them: Raft's shutdown
// takes milliseconds unless a replication waits on a peer that went
// silent.
const shutdownGrace = time.Second

func (n *Node) closeStores() {
	for i := len(n.closers) - 1; i >= 0; i-- {
		_ = n.closers[i].Close()
	}
	n.closers = nil
}

// advertiseAddr is a host:port as configured.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }
