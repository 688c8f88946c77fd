package testcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// Net is a private network of hosts on this machine, for tests of what
// crosses a network. Each host is a network namespace with an address of
// its own; the hosts and the test process meet on a bridge that lives in a
// namespace of its own too (the hub), so the machine's own firewall (a
// Docker host drops forwarded packets) never sees their traffic.
//
// Partition cuts hosts apart by dropping their packets silently, as a
// pulled cable or a firewall does: a peer's connections hang and time out
// instead of being refused, which is what a stopped process shows. The
// test process keeps reaching every host, as an operator's client outside
// the partition would.
//
// A Net needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2's ip and
// nftables' nft. NewNet removes everything it made when the test ends, and
// what an earlier test process killed before its cleanup left behind.
type Net struct {
	t      testing.TB
	prefix string // of the namespaces' names: hostscale-<pid>-<n>-
	link   string // the test process's end of its link to the hub
	hub    string
	subnet string // "10.x.y."
	hosts  []*Host
	mu     sync.Mutex
	cut    map[[2]int]bool // host pairs (by index, low first) that cannot talk
}

// Host is one namespace of a Net.
type Host struct {
	// Name is the namespace's name, as ip netns knows it.
	Name string
	// IP is the host's address on the Net.
	IP string
	n  *Net
	i  int
}

var netSeq atomic.Int32

// NewNet makes a network of n hosts at 10.x.y.11, .12, … and gives the
// test process 10.x.y.1 on it. Where this machine cannot (not root, no ip
// or nft), it skips the test, or fails it when $CI is set, so that a CI
// run never passes by skipping.
func NewNet(t testing.TB, n int) *Net {
	t.Helper()
	if err := netPossible(); err != nil {
		unavailable(t, "testcluster: no Net on this machine: %v", err)
	}
	sweepNets()
	pid, k := os.Getpid(), netSeq.Add(1)
	id := strconv.FormatInt(int64(pid), 36) + "x" + strconv.FormatInt(int64(k), 36)
	nt := &Net{
		t:      t,
		prefix: fmt.Sprintf("hostscale-%d-%d-", pid, k),
		link:   "hsv" + id,
		cut:    map[[2]int]bool{},
	}
	nt.hub = nt.prefix + "hub"
	var err error
	if nt.subnet, err = freeSubnet(pid, int(k)); err != nil {
		t.Fatalf("testcluster: %v", err)
	}
	t.Cleanup(nt.remove)
	steps := [][]string{
		{"netns", "add", nt.hub},
		{"-n", nt.hub, "link", "add", "br0", "type", "bridge"},
		{"-n", nt.hub, "link", "set", "br0", "up"},
		{"link", "add", nt.link, "type", "veth", "peer", "name", "up0", "netns", nt.hub},
		{"-n", nt.hub, "link", "set", "up0", "master", "br0", "up"},
		{"addr", "add", nt.subnet + "1/24", "dev", nt.link},
		{"link", "set", nt.link, "up"},
	}
	for i := range n {
		h := &Host{Name: fmt.Sprintf("%sh%d", nt.prefix, i+1), IP: fmt.Sprintf("%s%d", nt.subnet, 11+i), n: nt, i: i}
		nt.hosts = append(nt.hosts, h)
		port := fmt.Sprintf("p%d", i+1)
		steps = append(steps,
			[]string{"netns", "add", h.Name},
			[]string{"-n", nt.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", h.Name},
			[]string{"-n", nt.hub, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", h.Name, "addr", "add", h.IP + "/24", "dev", "eth0"},
			[]string{"-n", h.Name, "link", "set", "eth0", "up"},
			[]string{"-n", h.Name, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.Fatalf("testcluster: make the Net: %v", err)
		}
	}
	return nt
}

// Addr is the test process's own address on the Net: every host reaches
// a server the test listens on there, whatever the partition.
func (nt *Net) Addr() string { return nt.subnet + "1" }

// Hosts returns the hosts in order.
func (nt *Net) Hosts() []*Host { return append([]*Host(nil), nt.hosts...) }

// Partition cuts the hosts into the given groups: hosts in different
// groups drop each other's packets; a host in no group keeps every link
// it has. It replaces any earlier partition. Partition() heals.
func (nt *Net) Partition(groups ...[]*Host) {
	nt.t.Helper()
	group := map[int]int{}
	for g, hs := range groups {
		for _, h := range hs {
			group[h.i] = g + 1
		}
	}
	cut := map[[2]int]bool{}
	for a := range nt.hosts {
		for b := a + 1; b < len(nt.hosts); b++ {
			if group[a] != 0 && group[b] != 0 && group[a] != group[b] {
				cut[[2]int{a, b}] = true
			}
		}
	}
	nt.mu.Lock()
	defer nt.mu.Unlock()
	nt.cut = cut
	for _, h := range nt.hosts {
		var peers []string
		for _, o := range nt.hosts {
			if cut[[2]int{min(h.i, o.i), max(h.i, o.i)}] {
				peers = append(peers, o.IP)
			}
		}
		if err := h.setDropped(peers); err != nil {
			nt.t.Fatalf("testcluster: partition: %v", err)
		}
	}
}

// Isolate cuts h off from every other host.
func (nt *Net) Isolate(h *Host) {
	nt.t.Helper()
	var rest []*Host
	for _, o := range nt.hosts {
		if o != h {
			rest = append(rest, o)
		}
	}
	nt.Partition([]*Host{h}, rest)
}

// Heal joins every host again.
func (nt *Net) Heal() {
	nt.t.Helper()
	nt.Partition()
}

// Cut reports whether a and b cannot reach each other.
func (nt *Net) Cut(a, b *Host) bool {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	return nt.cut[[2]int{min(a.i, b.i), max(a.i, b.i)}]
}

// Command returns a command that runs the program in h's namespace. The
// program replaces ip netns exec, so the command's process is the
// program's.
func (h *Host) Command(path string, args ...string) *exec.Cmd {
	return exec.Command(ipPath, append([]string{"netns", "exec", h.Name, path}, args...)...)
}

// setDropped makes h drop every packet to or from the given addresses.
func (h *Host) setDropped(addrs []string) error {
	rules := "flush ruleset\n"
	if len(addrs) > 0 {
		set := strings.Join(addrs, ", ")
		rules += "table inet partition {\n" +
			"  chain in { type filter hook input priority 0; ip saddr { " + set + " } drop; }\n" +
			"  chain out { type filter hook output priority 0; ip daddr { " + set + " } drop; }\n" +
			"}\n"
	}
	cmd := exec.Command(ipPath, "netns", "exec", h.Name, nftPath, "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %v: %s", h.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// remove deletes the Net's namespaces; the links go with them.
func (nt *Net) remove() {
	for _, h := range nt.hosts {
		_ = ipCmd("netns", "del", h.Name)
	}
	_ = ipCmd("netns", "del", nt.hub)
	_ = ipCmd("link", "del", nt.link) // gone with the hub; here if the hub was not made
}

// The programs a Net runs, found by netPossible: on $PATH or in the
// system directories a non-root $PATH often lacks.
var ipPath, nftPath = "ip", "nft"

var netPossible = sync.OnceValue(func() error {
	if os.Geteuid() != 0 {
		return errors.New("it needs root")
	}
	for _, p := range []*string{&ipPath, &nftPath} {
		found, err := exec.LookPath(*p)
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if err != nil {
				found, err = exec.LookPath(dir + "/" + *p)
			}
		}
		if err != nil {
			return fmt.Errorf("it needs %s (iproute2's ip and nftables' nft): %w", *p, err)
		}
		*p = found
	}
	return nil
})

// sweepNets deletes the namespaces of Nets whose test process has died.
func sweepNets() {
	out, err := exec.Command(ipPath, "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "hostscale-")
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = ipCmd("netns", "del", name)
		}
	}
}

// freeSubnet picks a /24 in 10.128.0.0/9 that no address or route of this
// machine's namespace touches.
func freeSubnet(pid, k int) (string, error) {
	addrs, err := exec.Command(ipPath, "-4", "-o", "addr", "show").Output()
	if err != nil {
		return "", fmt.Errorf("ip addr: %v", err)
	}
	routes, err := exec.Command(ipPath, "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return "", fmt.Errorf("ip route: %v", err)
	}
	used := string(addrs) + string(routes)
	seed := pid*31 + k*7919
	for i := range 200 {
		v := (seed + i*104729) % (128 * 250)
		s := fmt.Sprintf("10.%d.%d.", 128+v/250, v%250)
		if !strings.Contains(used, " "+s) && !strings.Contains(used, "\n"+s) {
			return s, nil
		}
	}
	return "", errors.New("no free /24 in 10.128.0.0/9")
}

func ipCmd(args ...string) error {
	out, err := exec.Command(ipPath, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
