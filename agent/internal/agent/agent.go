package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/agent/internal/sample"
	"github.com/hostscale/hostscale/agent/internal/session"
	"github.com/hostscale/hostscale/internal/logging"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

var _ session.FactSource = (sample.Sampler)(nil)

// Config configures an Agent.
type Config struct {
	// Sampler measures the host.
	Sampler sample.Sampler
	// Session configures the stream to the controllers. Its Interval is
	// the sampling interval; its Facts, Logger and Registerer are filled
	// from this config when unset.
	Session session.Config
	// Logger is the agent's logger; nil discards.
	Logger *slog.Logger
	// Registerer receives the agent's and the session's metrics; nil
	// registers none.
	Registerer prometheus.Registerer
	// Usage, when set, is called once per sample and its result becomes
	// the sample's Instances: the CPU and memory of the instances the
	// agent runs. It must not block; the sample owns what it returns.
	Usage func() []*pb.InstanceUsage
}

// Validate reports the first field that makes the config unusable.
func (c Config) Validate() error {
	if c.Sampler == nil {
		return errors.New("agent: Sampler must be set")
	}
	return c.Session.Validate()
}

// Agent samples the host and streams the samples. Ready is safe for
// concurrent use; Run is called once.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	sess     *session.Session
	host     *hostCollector
	samples  prometheus.Counter
	failures prometheus.Counter
	duration prometheus.Histogram
}

// New returns an Agent ready to Run.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := logging.OrDiscard(cfg.Logger)
	sc := cfg.Session
	if sc.Facts == nil {
		sc.Facts = cfg.Sampler
	}
	if sc.Logger == nil {
		sc.Logger = log
	}
	if sc.Registerer == nil {
		sc.Registerer = cfg.Registerer
	}
	sess, err := session.New(sc)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:  cfg,
		log:  log,
		sess: sess,
		host: &hostCollector{},
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_samples_total",
			Help: "Samples taken.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hostscale_agent_sample_errors_total",
			Help: "Samples that could not be taken.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "hostscale_agent_sample_seconds",
			Help:    "Time taken by one sample.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 14), // 100µs to ~0.8s
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(a.samples, a.failures, a.duration, a.host)
	}
	return a, nil
}

// Ready returns nil while the agent is connected to a controller leader.
func (a *Agent) Ready() error { return a.sess.Ready() }

// Session returns the agent's session.
func (a *Agent) Session() *session.Session { return a.sess }

// Run samples every interval and streams the samples until ctx is
// cancelled; it returns nil then, after both loops have stopped.
func (a *Agent) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	var sessErr error
	wg.Go(func() { sessErr = a.sess.Run(ctx) })
	a.sampleLoop(ctx)
	wg.Wait()
	return sessErr
}

func (a *Agent) sampleLoop(ctx context.Context) {
	every := a.cfg.Session.Interval
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, every)
		start := time.Now()
		s, err := a.cfg.Sampler.Sample(sctx)
		cancel()
		a.duration.Observe(time.Since(start).Seconds())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.failures.Inc()
			if !failing {
				a.log.Warn("cannot sample the host", "err", err)
				failing = true
			}
			continue
		}
		if failing {
			a.log.Info("sampling the host again")
			failing = false
		}
		if a.cfg.Usage != nil {
			s.Instances = a.cfg.Usage()
		}
		a.samples.Inc()
		// The gauges keep their own copy: the session owns s and marks
		// samples late.
		a.host.latest.Store(proto.CloneOf(s))
		a.sess.Offer(s)
	}
}
