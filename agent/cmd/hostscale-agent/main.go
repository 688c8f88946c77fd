// Command hostscale-agent runs on every host: it samples the host's
// resources and streams them to the controller leader, runs the instances
// the leader assigns to it, and serves /metrics, /healthz and /readyz.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/hostscale/hostscale/agent/internal/agent"
	"github.com/hostscale/hostscale/agent/internal/condition"
	"github.com/hostscale/hostscale/agent/internal/driver"
	"github.com/hostscale/hostscale/agent/internal/node"
	"github.com/hostscale/hostscale/agent/internal/sample"
	"github.com/hostscale/hostscale/agent/internal/session"
	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/admin"
	"github.com/hostscale/hostscale/internal/commands"
	"github.com/hostscale/hostscale/internal/config"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/logging"
	"github.com/hostscale/hostscale/internal/sighup"
	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/version"
)

// MinInterval is the shortest sampling interval accepted.
const MinInterval = 100 * time.Millisecond

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// options are the parsed and checked flags.
type options struct {
	nodeID       string
	controllers  []string
	labels       map[string]string
	interval     time.Duration
	buffer       time.Duration
	mounts       []string
	dataDir      string
	httpAddr     string
	pprof        bool
	cgroups      string
	cgroupParent string
	advertise    string
	stopOnExit   bool
	// allow are the executables instances may run (-allow-commands); nil:
	// every one.
	allow        *commands.Rules
	dirRetention time.Duration
	dirsKept     int
	cpus         []int
	diskFree     float64
	memoryFree   float64
	transition   time.Duration
	log          logging.Options
	// tls gives, for each connection, how the agent speaks to the
	// controllers (nil: plaintext), from the identity it reloads on SIGHUP.
	tls func() *tls.Config
	// httpTLS, when set, makes -http-addr HTTPS only (-http-tls).
	httpTLS  *tls.Config
	identity *tlsx.Identity
	// token, when set, is sent with every call to the controllers
	// (-token-file), reloaded on SIGHUP.
	token *acl.TokenFile
}

// usageError is bad input: the process exits 2.
type usageError struct{ error }

// stateStallLimit is how long a write of the state file may run before
// /readyz calls the data directory's disk stalled, as a controller does
// for its Raft log.
const stateStallLimit = 5 * time.Second

func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "hostscale-agent: %v\n", err)
		return 2
	}
	if err := serve(o, stderr); err != nil {
		fmt.Fprintf(stderr, "hostscale-agent: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("hostscale-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var controllers, labels, mounts, cpus string
	var showVersion bool
	fs.String(config.ConfigFlag, "", "read flags from this `file` of key = value lines (flags given on the command line win)")
	fs.StringVar(&o.nodeID, "node-id", "", "this host's node id, a DNS label (default: the hostname, sanitized); kept in -data-dir and reused")
	fs.StringVar(&controllers, "controllers", "127.0.0.1:7700", "comma-separated host:port list of the controllers")
	fs.StringVar(&labels, "labels", "", "comma-separated key=value labels of this host, e.g. zone=a,tier=web")
	fs.DurationVar(&o.interval, "interval", time.Second, "sampling interval (at least 100ms)")
	fs.DurationVar(&o.buffer, "buffer", 60*time.Second, "how much sampling time to keep while no controller acknowledges (at least -interval)")
	fs.StringVar(&mounts, "mounts", "", "comma-separated mount points to report (default: every real filesystem)")
	fs.StringVar(&o.dataDir, "data-dir", "/var/lib/hostscale-agent", "directory for the agent's state (the node id)")
	fs.StringVar(&cpus, "cpus", "", "cores whose use is this host's CPU, e.g. 0-3,6 (an agent per cpuset of a larger machine; default: every core)")
	fs.StringVar(&o.advertise, "advertise-addr", "127.0.0.1", "IP address balancers reach this host's instances on; each instance gets a free port on it")
	fs.DurationVar(&o.dirRetention, "instance-dir-retention", driver.DefaultConfig().DirRetention, "keep the directory and logs of an instance this agent no longer runs until nothing in it changed for this long")
	fs.StringVar(&o.cgroups, "cgroups", driver.DefaultConfig().Cgroups, "hold instances to their template's resources (a CPU quota, a memory limit) in cgroups: auto (where the cgroup file system lets the agent), on (or fail) or off")
	fs.StringVar(&o.cgroupParent, "cgroup-parent", driver.DefaultConfig().CgroupParent, "cgroup, relative to /sys/fs/cgroup, under which each limited instance gets a group (<parent>/<node>/<instance>)")
	fs.IntVar(&o.dirsKept, "instance-dirs-kept", driver.DefaultConfig().DirsKept, "keep the directories of at most this many instances this agent no longer runs, the most recently changed")
	fs.Float64Var(&o.diskFree, "disk-pressure-free", condition.DefaultDiskFreePercent, "percent of the -data-dir filesystem's space that must stay free: under it (or under 5 % of its inodes free) the host is under disk pressure and gets no new instances; 0 never")
	fs.Float64Var(&o.memoryFree, "memory-pressure-free", condition.DefaultMemoryFreePercent, "percent of the host's memory that must stay available: under it the host is under memory pressure and gets no new instances; 0 never")
	fs.DurationVar(&o.transition, "pressure-transition", condition.DefaultTransition, "how long the cause of a condition (disk or memory pressure, a stalled disk) must be gone before the condition ends")
	allow := fs.String("allow-commands", "", "comma-separated absolute path `patterns` of the executables instances may run (`*` within one element, a final `**` for anything below), e.g. /opt/apps/**,/usr/bin/python3; templates may then set no LD_* variable or GCONV_PATH (default: every executable)")
	fs.BoolVar(&o.stopOnExit, "stop-instances-on-exit", false, "stop every instance when the agent exits (by default they keep running and the next agent start adopts them)")
	fs.StringVar(&o.httpAddr, "http-addr", "127.0.0.1:7703", "address of /metrics, /healthz and /readyz (empty: none)")
	fs.BoolVar(&o.pprof, "pprof", false, "serve /debug/pprof/ on the -http-addr address")
	var tlsFiles tlsx.Files
	httpTLS := fs.String("http-tls", tlsx.HTTPOff, "TLS `mode` of -http-addr: off (plaintext), on (HTTPS with -tls-cert, no client certificate asked) or verify (also require a client certificate of -tls-ca)")
	fs.StringVar(&tlsFiles.CA, "tls-ca", "", "PEM `file` of the CA that signs the controllers' certificates: speak TLS to them")
	fs.StringVar(&tlsFiles.Cert, "tls-cert", "", "PEM `file` of this agent's certificate, for controllers that require one (mutual TLS)")
	fs.StringVar(&tlsFiles.Key, "tls-key", "", "PEM `file` of -tls-cert's private key")
	tokenFile := fs.String("token-file", "", "`file` holding the ACL token sent to controllers that have an -acl-file (role agent); SIGHUP reloads it")
	fs.StringVar(&o.log.Level, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.log.Format, "log-format", "text", "log format: text or json")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	if err := config.Parse(fs, args); err != nil {
		return o, err
	}
	if showVersion {
		fmt.Fprintln(stderr, "hostscale-agent", version.Version)
		return o, flag.ErrHelp
	}
	var err error
	if o.nodeID != "" {
		if err := node.ValidateID(o.nodeID); err != nil {
			return o, fmt.Errorf("-node-id: %w", err)
		}
	}
	if o.controllers, err = node.ParseControllers(controllers); err != nil {
		return o, fmt.Errorf("-controllers: %w", err)
	}
	if o.labels, err = node.ParseLabels(labels); err != nil {
		return o, fmt.Errorf("-labels: %w", err)
	}
	switch {
	case o.interval < MinInterval:
		return o, fmt.Errorf("-interval: %s is below the minimum of %s", o.interval, MinInterval)
	case o.buffer < o.interval:
		return o, fmt.Errorf("-buffer: %s is shorter than -interval %s", o.buffer, o.interval)
	case o.dataDir == "":
		return o, errors.New("-data-dir: must be set")
	case o.dirRetention <= 0:
		return o, fmt.Errorf("-instance-dir-retention: %s is not a positive duration", o.dirRetention)
	case o.dirsKept < 1:
		return o, fmt.Errorf("-instance-dirs-kept: %d is below 1", o.dirsKept)
	case o.cgroups != driver.CgroupsAuto && o.cgroups != driver.CgroupsOn && o.cgroups != driver.CgroupsOff:
		return o, fmt.Errorf("-cgroups: %q is not auto, on or off", o.cgroups)
	case math.IsNaN(o.diskFree) || o.diskFree < 0 || o.diskFree >= 100:
		return o, fmt.Errorf("-disk-pressure-free: %v is not a percentage in [0, 100)", o.diskFree)
	case math.IsNaN(o.memoryFree) || o.memoryFree < 0 || o.memoryFree >= 100:
		return o, fmt.Errorf("-memory-pressure-free: %v is not a percentage in [0, 100)", o.memoryFree)
	case o.transition < 0:
		return o, fmt.Errorf("-pressure-transition: %s is negative", o.transition)
	case o.cgroupParent == "" || filepath.IsAbs(o.cgroupParent) || slices.Contains(strings.Split(o.cgroupParent, "/"), ".."):
		return o, fmt.Errorf("-cgroup-parent: %q is not a path relative to the cgroup root", o.cgroupParent)
	}
	for _, m := range strings.Split(mounts, ",") {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		if !filepath.IsAbs(m) {
			return o, fmt.Errorf("-mounts: %q is not an absolute path", m)
		}
		o.mounts = append(o.mounts, filepath.Clean(m))
	}
	if o.allow, err = commands.Parse(*allow); err != nil {
		return o, fmt.Errorf("-allow-commands: %w", err)
	}
	if o.cpus, err = parseCPUs(cpus, runtime.NumCPU()); err != nil {
		return o, fmt.Errorf("-cpus: %w", err)
	}
	if _, err := netip.ParseAddr(o.advertise); err != nil {
		return o, fmt.Errorf("-advertise-addr: %q is not an IP address", o.advertise)
	}
	if o.httpAddr != "" {
		if _, _, err := net.SplitHostPort(o.httpAddr); err != nil {
			return o, fmt.Errorf("-http-addr: %q: expected host:port", o.httpAddr)
		}
	}
	if o.identity, err = tlsFiles.Load(); err != nil {
		return o, err
	}
	if o.identity != nil {
		o.tls = o.identity.Client
	}
	if *tokenFile != "" {
		if o.token, err = acl.ReadTokenFile(*tokenFile); err != nil {
			return o, fmt.Errorf("-token-file: %w", err)
		}
	}
	if o.httpTLS, err = tlsx.HTTPServer(o.identity, *httpTLS); err != nil {
		return o, err
	}
	if _, err := logging.New(io.Discard, o.log, "agent"); err != nil {
		return o, err
	}
	return o, nil
}

// serve runs the agent until SIGINT or SIGTERM.
func serve(o options, stderr io.Writer) error {
	hup := sighup.Notify()
	defer hup.Stop()
	if err := os.MkdirAll(o.dataDir, 0o755); err != nil {
		return fmt.Errorf("-data-dir: %w", err)
	}
	hostname, err := os.Hostname()
	if err != nil && o.nodeID == "" {
		return fmt.Errorf("-node-id: not set and no hostname: %w", err)
	}
	id, err := node.ResolveID(o.dataDir, o.nodeID, hostname)
	if errors.Is(err, node.ErrIDMismatch) {
		return usageError{fmt.Errorf("-node-id: %w", err)}
	}
	if err != nil {
		return fmt.Errorf("-node-id: %w", err)
	}
	logger, err := logging.New(stderr, o.log, "agent", "node", id)
	if err != nil {
		return usageError{err}
	}

	sc := sample.DefaultConfig()
	sc.Mounts = o.mounts
	sc.CPUs = o.cpus
	sc.Logger = logger
	sampler, err := sample.New(sc)
	if err != nil {
		return err
	}
	reg := admin.NewRegistry()
	if o.identity != nil {
		reg.MustRegister(tlsx.Collector(o.identity))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "hostscale_agent_info",
		Help:        "The agent's version and node id; always 1.",
		ConstLabels: prometheus.Labels{"version": version.Version, "node": id},
	}, func() float64 { return 1 }))
	dc := driver.DefaultConfig()
	dc.DataDir, dc.AdvertiseAddr, dc.Node, dc.Logger = o.dataDir, o.advertise, id, logger
	dc.DirRetention, dc.DirsKept = o.dirRetention, o.dirsKept
	dc.Cgroups, dc.CgroupParent = o.cgroups, o.cgroupParent
	dc.AllowCommands = o.allow
	dc.Registerer = reg
	drv, err := driver.New(dc)
	if err != nil {
		return err
	}
	cc := condition.DefaultConfig()
	cc.DataDir, cc.DiskFreePercent, cc.MemoryFreePercent, cc.Transition = o.dataDir, o.diskFree, o.memoryFree, o.transition
	cc.Stalled, cc.StallLimit = drv.SaveInProgress, stateStallLimit
	cc.Logger, cc.Registerer = logger, reg
	mon, err := condition.New(cc)
	if err != nil {
		return err
	}
	ssc := session.DefaultConfig()
	ssc.Instances = drv
	ssc.AllowedCommands = o.allow.Patterns()
	ssc.Conditions = mon
	ssc.Node = id
	ssc.Labels = o.labels
	ssc.Interval = o.interval
	ssc.Controllers = o.controllers
	ssc.Dial = func(addr string) (*grpc.ClientConn, error) {
		return grpcx.Dial(addr, grpcx.WithTLSFunc(o.tls), acl.WithToken(o.token))
	}
	ssc.BufferSize = max(1, int(o.buffer/o.interval))
	a, err := agent.New(agent.Config{Sampler: sampler, Session: ssc, Logger: logger, Registerer: reg, Usage: drv.Usage})
	if err != nil {
		return err
	}

	var adm *admin.Server
	if o.httpAddr != "" {
		lis, err := net.Listen("tcp", o.httpAddr)
		if err != nil {
			return fmt.Errorf("-http-addr: %w", err)
		}
		ready := func() error {
			if d := drv.SaveInProgress(); d > stateStallLimit {
				return fmt.Errorf("a write of the state file in -data-dir has run for %v: the disk is stalled", d.Round(time.Second))
			}
			return a.Ready()
		}
		adm = admin.New(lis, reg, admin.Options{Ready: ready, Pprof: o.pprof, TLS: o.httpTLS})
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go hup.Run(ctx, logger, tlsx.Reloader(o.identity, logger), acl.Reloader(nil, o.token, logger))
	logger.Info("agent starting", "version", version.Version, "controllers", strings.Join(o.controllers, ","),
		"interval", o.interval, "buffer_samples", ssc.BufferSize, "http_addr", addrOf(adm))

	// Shutdown order: a signal cancels ctx; the agent stops sampling and
	// closes its stream, the admin server stops serving; both are awaited.
	var wg sync.WaitGroup
	var admErr error
	if adm != nil {
		wg.Go(func() {
			if admErr = adm.Run(ctx); admErr != nil {
				cancel()
			}
		})
	}
	var drvErr error
	wg.Go(func() { drvErr = drv.Run(ctx) })
	// A condition the host is under when the agent starts goes in its
	// first Hello.
	mon.Check(ctx)
	wg.Go(func() { _ = mon.Run(ctx) })
	runErr := a.Run(ctx)
	cancel()
	wg.Wait()
	if o.stopOnExit {
		logger.Info("stopping every instance (-stop-instances-on-exit)")
		drv.StopAll(context.Background())
	}
	logger.Info("agent stopped")
	return errors.Join(runErr, admErr, drvErr)
}

// parseCPUs reads a core list such as "0-3,6", each below n.
func parseCPUs(s string, n int) ([]int, error) {
	var out []int
	seen := map[int]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return nil, fmt.Errorf("%q is not a core or a range of cores (0-3)", part)
		}
		for c := a; c <= b; c++ {
			if c >= n {
				return nil, fmt.Errorf("core %d: this machine has cores 0-%d", c, n-1)
			}
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
			}
		}
	}
	return out, nil
}

func addrOf(s *admin.Server) string {
	if s == nil {
		return ""
	}
	return s.Addr().String()
}
