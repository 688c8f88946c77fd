// Command hostscale-balancer runs the hostscale data plane: an HTTP/1.1
// reverse proxy serving a backend table from the controller cluster
// (-controllers), from a file (-table), or from its data directory
// (-data-dir, the last table it applied).
//
// Usage:
//
//	hostscale-balancer -controllers 10.0.0.1:7700,10.0.0.2:7700,10.0.0.3:7700 -data-dir /var/lib/hostscale-balancer
//	hostscale-balancer -config /etc/hostscale/balancer.conf
//	hostscale-balancer -table table.json [-listen 127.0.0.1:8080] [-http-addr 127.0.0.1:7802]
//
// The data directory's table is applied first, then -table; tables from the
// controllers are applied when they are newer than the table in force.
// SIGHUP re-reads the -table file. SIGINT and SIGTERM stop gracefully.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/hostscale/hostscale/balancer"
	"github.com/hostscale/hostscale/balancer/admin"
	"github.com/hostscale/hostscale/balancer/watch"
	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/config"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/sighup"
	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// options are the parsed command line.
type options struct {
	bal       balancer.Config
	adm       admin.Config
	tableFile string
	logLevel  slog.Level
	// controllers are the controllers' gRPC addresses; none means static
	// and saved tables only.
	controllers []string
	// name is the balancer's name to the controllers.
	name string
	// statsInterval is how often per-backend and per-pool counters are
	// reported to the controller; 0: never.
	statsInterval time.Duration
	// tls gives, for each connection, how the balancer speaks to the
	// controllers (nil: plaintext), from the identity it reloads on SIGHUP.
	tls      func() *tls.Config
	identity *tlsx.Identity
	// token, when set, is sent with every call to the controllers
	// (-token-file), reloaded on SIGHUP.
	token *acl.TokenFile
	// certDir holds the certificates of -tls-listen, certs them loaded.
	certDir string
	certs   *balancer.CertStore
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{bal: balancer.DefaultConfig(), adm: admin.DefaultConfig(), statsInterval: watch.DefaultConfig().StatsInterval}
	fs := flag.NewFlagSet("hostscale-balancer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.bal
	fs.String(config.ConfigFlag, "", "read flags from this `file` of key = value lines (flags given on the command line win)")
	fs.StringVar(&c.ListenAddr, "listen", c.ListenAddr, "proxy listen address")
	fs.StringVar(&c.TLSListenAddr, "tls-listen", "", "also serve clients HTTPS on this `address`, with the certificates of -tls-cert-dir")
	accessLog := fs.String("access-log", "", "append a line per request to this `file` (\"-\": standard output); SIGHUP reopens it")
	accessLogFormat := fs.String("access-log-format", balancer.AccessLogCombined, "`format` of -access-log: combined (Apache's and nginx's) or json")
	fs.IntVar(&c.MaxConns, "max-conns", defaultMaxConns(), "most client `connections` open at once; at the bound new ones wait in the listen queue (0: no bound; default: half the open-file limit)")
	fs.BoolVar(&c.ProxyProtocol, "proxy-protocol", false, "require a PROXY protocol header (v1 or v2) on every client connection to -listen and -tls-listen, as HAProxy's accept-proxy: its source address is the client's")
	fs.BoolVar(&c.HTTP2, "tls-http2", false, "with -tls-listen, also offer clients HTTP/2 (ALPN h2), as nginx's http2 on; backends still get HTTP/1.1")
	fs.IntVar(&c.HTTP2MaxStreams, "http2-max-streams", c.HTTP2MaxStreams, "with -tls-http2, the most `streams` a client may have open at once on one connection")
	fs.StringVar(&o.certDir, "tls-cert-dir", "", "`dir`ectory of PEM files, each a certificate chain and its private key, that -tls-listen serves by server name (SNI); SIGHUP reloads it")
	fs.StringVar(&o.adm.Addr, "http-addr", o.adm.Addr, "admin listen address (/metrics, /healthz, /readyz)")
	fs.StringVar(&o.tableFile, "table", "", "serve the static table in this JSON `file` (see docs/balancer.md)")
	fs.StringVar(&c.DataDir, "data-dir", "", "`dir`ectory where each applied table is saved and loaded from at start")
	controllers := fs.String("controllers", "", "comma-separated gRPC `addresses` (host:port) of controllers to take tables from (empty: none)")
	fs.StringVar(&o.name, "name", "", "this balancer's `name` to the controllers, a DNS label (default: the hostname, sanitized)")
	fs.DurationVar(&o.statsInterval, "stats-interval", o.statsInterval, "how often per-backend and per-pool counters are reported to the controller (0 disables)")
	trusted := fs.String("trusted-proxies", "", "comma-separated `CIDRs` whose X-Forwarded-* headers are kept and extended")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", c.ConnectTimeout, "backend connect timeout")
	fs.DurationVar(&c.HeaderTimeout, "header-timeout", c.HeaderTimeout, "time allowed to receive a request head")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "client keep-alive idle timeout, and body inactivity timeout")
	fs.DurationVar(&c.ResponseHeaderTimeout, "response-header-timeout", c.ResponseHeaderTimeout, "time allowed for a backend's response head")
	fs.DurationVar(&c.UpstreamIdleTimeout, "upstream-idle-timeout", c.UpstreamIdleTimeout, "idle time after which pooled backend connections close")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", c.MaxHeaderBytes, "largest request or response head, in bytes")
	fs.IntVar(&c.Health.MaxEjectionPercent, "max-ejection-percent", c.Health.MaxEjectionPercent, "largest share of a pool ejected at once")
	fs.DurationVar(&c.SlowStart, "slow-start", c.SlowStart, "ramp-up window of backends added to a pool (0 disables)")
	fs.IntVar(&c.MaxHeldPerPool, "max-held", c.MaxHeldPerPool, "most requests held at once for a pool without a backend (hold_when_empty); beyond, 503 at once")
	fs.BoolVar(&o.adm.Pprof, "pprof", false, "serve /debug/pprof/ on the admin address")
	var tlsFiles tlsx.Files
	httpTLS := fs.String("http-tls", tlsx.HTTPOff, "TLS `mode` of -http-addr: off (plaintext), on (HTTPS with -tls-cert, no client certificate asked) or verify (also require a client certificate of -tls-ca)")
	fs.StringVar(&tlsFiles.CA, "tls-ca", "", "PEM `file` of the CA that signs the controllers' certificates: speak TLS to them")
	fs.StringVar(&tlsFiles.Cert, "tls-cert", "", "PEM `file` of this balancer's certificate, for controllers that require one (mutual TLS)")
	fs.StringVar(&tlsFiles.Key, "tls-key", "", "PEM `file` of -tls-cert's private key")
	tokenFile := fs.String("token-file", "", "`file` holding the ACL token sent to controllers that have an -acl-file (role balancer); SIGHUP reloads it")
	level := fs.String("log-level", "info", "log level: debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	if *showVersion {
		fmt.Fprintln(stderr, "hostscale-balancer", version.Version)
		return nil, flag.ErrHelp
	}
	if err := o.logLevel.UnmarshalText([]byte(*level)); err != nil {
		return nil, usageError{fmt.Sprintf("-log-level: %q is not debug, info, warn or error", *level)}
	}
	if *trusted != "" {
		for _, s := range strings.Split(*trusted, ",") {
			s = strings.TrimSpace(s)
			p, err := netip.ParsePrefix(s)
			if err != nil {
				a, aerr := netip.ParseAddr(s)
				if aerr != nil {
					return nil, usageError{fmt.Sprintf("-trusted-proxies: %q is not a CIDR or IP address", s)}
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			c.TrustedProxies = append(c.TrustedProxies, p)
		}
	}
	var err error
	if o.controllers, err = watch.ParseControllers(*controllers); err != nil {
		return nil, usageError{"-controllers: " + err.Error()}
	}
	if o.identity, err = tlsFiles.Load(); err != nil {
		return nil, usageError{err.Error()}
	}
	if o.identity != nil {
		o.tls = o.identity.Client
	}
	if o.adm.TLS, err = tlsx.HTTPServer(o.identity, *httpTLS); err != nil {
		return nil, usageError{err.Error()}
	}
	if *tokenFile != "" {
		if o.token, err = acl.ReadTokenFile(*tokenFile); err != nil {
			return nil, usageError{"-token-file: " + err.Error()}
		}
	}
	if o.name != "" && !watch.ValidName(o.name) {
		return nil, usageError{fmt.Sprintf("-name: %q is not a DNS label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters)", o.name)}
	}
	if o.name == "" && len(o.controllers) > 0 {
		host, _ := os.Hostname()
		if o.name = watch.NameFromHostname(host); o.name == "" {
			return nil, usageError{fmt.Sprintf("-name: cannot make a name of the hostname %q; set -name", host)}
		}
	}
	if o.statsInterval < 0 || (o.statsInterval > 0 && o.statsInterval < watch.MinStatsInterval) {
		return nil, usageError{fmt.Sprintf("-stats-interval: %v must be 0 (no reports) or at least %v", o.statsInterval, watch.MinStatsInterval)}
	}
	switch {
	case c.TLSListenAddr != "" && o.certDir == "":
		return nil, usageError{"-tls-cert-dir: needed with -tls-listen"}
	case c.TLSListenAddr == "" && o.certDir != "":
		return nil, usageError{"-tls-listen: needed with -tls-cert-dir"}
	case c.HTTP2 && c.TLSListenAddr == "":
		return nil, usageError{"-tls-http2: needs -tls-listen (HTTP/2 is offered by ALPN, in TLS)"}
	case c.HTTP2MaxStreams < 1 || c.HTTP2MaxStreams > 1<<20:
		return nil, usageError{fmt.Sprintf("-http2-max-streams: %d is not in 1..1048576", c.HTTP2MaxStreams)}
	case o.certDir != "":
		if o.certs, err = balancer.LoadCerts(o.certDir); err != nil {
			return nil, usageError{"-tls-cert-dir: " + err.Error()}
		}
		c.TLS = o.certs.TLSConfig()
	}
	if err := c.Validate(); err != nil {
		return nil, usageError{err.Error()}
	}
	if *accessLog != "" {
		if c.AccessLog, err = balancer.OpenAccessLog(*accessLog, *accessLogFormat); err != nil {
			return nil, usageError{err.Error()}
		}
	} else if err := balancer.CheckAccessLogFormat(*accessLogFormat); err != nil {
		return nil, usageError{err.Error()}
	}
	return o, nil
}

// defaultMaxConns is -max-conns' default, as HAProxy derives maxconn from
// the open-file limit: half of it, as each client connection may hold a
// backend connection too, less a margin for listeners, logs and the
// controllers' connections.
func defaultMaxConns() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == ^uint64(0) {
		return 0
	}
	return max(int(min(lim.Cur, 1<<30)/2)-64, 64)
}

// leaveTimeout bounds the last stats report, sent on the way out.
const leaveTimeout = 3 * time.Second

func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "hostscale-balancer: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	o.bal.Logger = log
	o.adm.Logger = log
	if err := serve(o, log); err != nil {
		fmt.Fprintf(stderr, "hostscale-balancer: %v\n", err)
		return 1
	}
	return 0
}

func serve(o *options, log *slog.Logger) error {
	hup := sighup.Notify()
	defer hup.Stop()
	if o.bal.DataDir != "" {
		if err := os.MkdirAll(o.bal.DataDir, 0o750); err != nil {
			return fmt.Errorf("-data-dir: %w", err)
		}
	}
	b, err := balancer.New(o.bal)
	if err != nil {
		return err
	}
	if ok, err := b.LoadDataDir(); err != nil {
		return fmt.Errorf("-data-dir: %w", err)
	} else if ok {
		log.Info("loaded saved table", "version", b.Table().Version.String())
	}
	if o.tableFile != "" {
		if err := applyFile(b, o.tableFile, log); err != nil {
			return fmt.Errorf("-table: %w", err)
		}
	}
	var w *watch.Watcher
	if len(o.controllers) > 0 {
		cfg := watch.DefaultConfig()
		cfg.Controllers, cfg.Name, cfg.Balancer, cfg.Logger = o.controllers, o.name, b, log
		cfg.StatsInterval = o.statsInterval
		cfg.Dial = func(addr string) (*grpc.ClientConn, error) {
			return grpcx.Dial(addr, grpcx.WithTLSFunc(o.tls), acl.WithToken(o.token))
		}
		if w, err = watch.New(cfg); err != nil {
			return err
		}
		o.adm.Collectors = append(o.adm.Collectors, w)
	}
	if o.identity != nil {
		o.adm.Collectors = append(o.adm.Collectors, tlsx.Collector(o.identity))
	}
	if o.certs != nil {
		o.adm.Collectors = append(o.adm.Collectors, certCollector{o.certs})
		for _, ci := range o.certs.Certs() {
			log.Info("certificate", "file", ci.File, "names", strings.Join(ci.Names, ","), "not_after", ci.NotAfter)
		}
	}
	adm, err := admin.New(o.adm, b)
	if err != nil {
		return err
	}
	log.Info("starting", "version", version.Version, "name", o.name, "controllers", strings.Join(o.controllers, ","))

	if l := o.bal.AccessLog; l != nil {
		// The log outlives the serving: the last requests' lines are
		// written once every connection is done.
		lctx, stopLog := context.WithCancel(context.Background())
		logDone := make(chan struct{})
		go func() {
			defer close(logDone)
			if err := l.Run(lctx); err != nil {
				log.Error("close the access log", "err", err)
			}
		}()
		defer func() { stopLog(); <-logDone }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := b.Run(ctx)
		if w != nil {
			// Every request is answered: tell the leader this balancer
			// is gone rather than let it wait for its reports.
			lctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
			if lerr := w.Leave(lctx); lerr != nil {
				log.Warn("tell the controllers this balancer leaves", "err", lerr)
			} else {
				log.Info("left the controllers")
			}
			cancel()
		}
		return err
	})
	g.Go(func() error { return adm.Run(ctx) })
	if w != nil {
		g.Go(func() error { return w.Run(ctx) })
	}
	g.Go(func() error {
		hup.Run(ctx, log, tlsx.Reloader(o.identity, log), acl.Reloader(nil, o.token, log), o.reloader(b, log))
		return nil
	})
	return g.Wait()
}

// reloader returns what a SIGHUP reloads besides the TLS and token files:
// the -table file, the access log (reopened, for log rotation) and the
// certificates of -tls-listen; nil when there is none of them.
func (o *options) reloader(b *balancer.Balancer, log *slog.Logger) func() {
	if o.tableFile == "" && o.certs == nil && o.bal.AccessLog == nil {
		return nil
	}
	return func() {
		if o.tableFile != "" {
			if err := applyFile(b, o.tableFile, log); err != nil {
				log.Error("reload table", "file", o.tableFile, "err", err)
			}
		}
		if l := o.bal.AccessLog; l != nil {
			if err := l.Reopen(); err != nil {
				log.Error("reopen the access log; lines go to the file open", "err", err)
			}
		}
		if o.certs != nil {
			if err := o.certs.Reload(); err != nil {
				log.Error("reload certificates; the ones in force stay", "dir", o.certDir, "err", err)
			} else {
				log.Info("certificates reloaded", "dir", o.certDir, "count", len(o.certs.Certs()))
			}
		}
	}
}

// applyFile applies the table in path. A table older than the one in force
// (say, the data directory holds a newer one) is kept out with a warning.
func applyFile(b *balancer.Balancer, path string, log *slog.Logger) error {
	t, err := balancer.ReadTableFile(path)
	if err != nil {
		return err
	}
	err = b.Apply(t)
	switch {
	case errors.Is(err, balancer.ErrStaleVersion):
		log.Warn("table file is older than the table in force; keeping the newer",
			"file", path, "file_version", t.Version.String(), "version", b.Table().Version.String())
		return nil
	case errors.Is(err, balancer.ErrPersist):
		log.Error("table applied but not saved", "err", err)
		return nil
	}
	return err
}

// certCollector exports when each certificate of -tls-cert-dir expires, so
// that an alert can fire weeks before a client sees an expired one.
type certCollector struct{ certs *balancer.CertStore }

var descCertNotAfter = prometheus.NewDesc("hostscale_balancer_tls_certificate_not_after_timestamp_seconds",
	"When each certificate served on -tls-listen expires (Unix time).", []string{"file"}, nil)

func (certCollector) Describe(chan<- *prometheus.Desc) {}

func (c certCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ci := range c.certs.Certs() {
		ch <- prometheus.MustNewConstMetric(descCertNotAfter, prometheus.GaugeValue, float64(ci.NotAfter.Unix()), ci.File)
	}
}
