package driver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hostscale/hostscale/internal/commands"
)

// Config configures a Driver. Zero durations and counts mean their
// defaults (see DefaultConfig).
type Config struct {
	// DataDir is the agent's data directory; the driver keeps its state
	// file and one directory per instance under DataDir/instances/.
	DataDir string
	// AdvertiseAddr is the IP (or host name) balancers reach instances on,
	// without a port. Each instance gets a free TCP port on it.
	AdvertiseAddr string
	// Node is the node's name, passed to instances in HOSTSCALE_NODE.
	Node string
	// Logger receives the driver's records; nil discards them.
	Logger *slog.Logger
	// Restart back-off of an instance that exited while wanted: the first
	// restart waits RestartBase, each next one twice as long up to
	// RestartMax; the wait is back to RestartBase once an instance stayed
	// up for RestartReset.
	RestartBase, RestartMax, RestartReset time.Duration
	// LogMaxBytes bounds each instance's stdout.log and stderr.log: a file
	// that reached it has its newest LogMaxBytes kept in <file>.1
	// (replacing any older one) and starts again empty.
	LogMaxBytes int64
	// UnhealthyAfter is the number of consecutive failed health checks
	// that turn a HEALTHY instance UNHEALTHY.
	UnhealthyAfter int
	// DirRetention and DirsKept bound the directories (and logs) of
	// instances the driver no longer has: each is removed once nothing in
	// it changed for DirRetention, and beyond the DirsKept most recently
	// changed ones.
	DirRetention time.Duration
	DirsKept     int
	// Cgroups decides whether instances are held to their template's
	// reservations (cores, memory) in cgroups: CgroupsAuto (the default),
	// CgroupsOn or CgroupsOff. CgroupRoot is where the cgroup file system
	// is mounted (/sys/fs/cgroup); CgroupParent the group, relative to
	// it, under which each such instance gets a group of its own
	// ("hostscale").
	Cgroups, CgroupRoot, CgroupParent string
	// AllowCommands are the executables instances may run
	// (-allow-commands); nil: every one. With rules, a template's env may
	// not set the dynamic loader's variables (LD_*) or glibc's GCONV_PATH,
	// which would load code
	// into an allowed executable.
	AllowCommands *commands.Rules
	// Registerer receives the driver's metrics; nil: none.
	Registerer prometheus.Registerer
	// Now is the clock of the `since` timestamps; nil means time.Now.
	Now func() time.Time
}

// DefaultConfig returns a Config with every default set; DataDir and
// AdvertiseAddr are left for the caller.
func DefaultConfig() Config {
	return Config{
		RestartBase:    500 * time.Millisecond,
		RestartMax:     30 * time.Second,
		RestartReset:   10 * time.Second,
		LogMaxBytes:    1 << 20,
		UnhealthyAfter: 3,
		DirRetention:   time.Hour,
		DirsKept:       50,
		Cgroups:        CgroupsAuto,
		CgroupRoot:     "/sys/fs/cgroup",
		CgroupParent:   "hostscale",
	}
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.RestartBase == 0 {
		c.RestartBase = d.RestartBase
	}
	if c.RestartMax == 0 {
		c.RestartMax = max(d.RestartMax, c.RestartBase)
	}
	if c.RestartReset == 0 {
		c.RestartReset = d.RestartReset
	}
	if c.LogMaxBytes == 0 {
		c.LogMaxBytes = d.LogMaxBytes
	}
	if c.UnhealthyAfter == 0 {
		c.UnhealthyAfter = d.UnhealthyAfter
	}
	if c.DirRetention == 0 {
		c.DirRetention = d.DirRetention
	}
	if c.DirsKept == 0 {
		c.DirsKept = d.DirsKept
	}
	if c.Cgroups == "" {
		c.Cgroups = d.Cgroups
	}
	if c.CgroupRoot == "" {
		c.CgroupRoot = d.CgroupRoot
	}
	if c.CgroupParent == "" {
		c.CgroupParent = d.CgroupParent
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports the first field that makes the config unusable. Zero
// values stand for their defaults and are valid.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.DataDir == "":
		return errors.New("driver: DataDir must be set")
	case c.AdvertiseAddr == "":
		return errors.New("driver: AdvertiseAddr must be set")
	case c.RestartBase < 0 || c.RestartMax < c.RestartBase:
		return errors.New("driver: need 0 < RestartBase <= RestartMax")
	case c.RestartReset < 0:
		return errors.New("driver: RestartReset must not be negative")
	case c.LogMaxBytes < 0:
		return errors.New("driver: LogMaxBytes must not be negative")
	case c.UnhealthyAfter < 0:
		return errors.New("driver: UnhealthyAfter must not be negative")
	case c.DirRetention < 0:
		return errors.New("driver: DirRetention must not be negative")
	case c.DirsKept < 0:
		return errors.New("driver: DirsKept must not be negative")
	case c.Cgroups != CgroupsAuto && c.Cgroups != CgroupsOn && c.Cgroups != CgroupsOff:
		return fmt.Errorf("driver: Cgroups is %q, not %s, %s or %s", c.Cgroups, CgroupsAuto, CgroupsOn, CgroupsOff)
	case filepath.IsAbs(c.CgroupParent) || slices.Contains(strings.Split(c.CgroupParent, "/"), ".."):
		return fmt.Errorf("driver: CgroupParent %q must be a path relative to the cgroup root, without ..", c.CgroupParent)
	}
	if _, _, err := net.SplitHostPort(c.AdvertiseAddr); err == nil {
		return errors.New("driver: AdvertiseAddr must be an IP or host without a port")
	}
	return nil
}
