// Package freeport gives tests loopback ports that a stopped server can bind
// again. A port the kernel chooses (":0") comes from its ephemeral range,
// the range it also gives outgoing connections their local ports from: once
// a server in a test stops, any connection the test opens may take its
// port, for as long as it lives, and the restarted server cannot listen
// there. Listen picks ports below that range, which the kernel never hands
// out by itself (Consul's sdk/freeport does the same).
package freeport

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// lowest is the first port Listen tries: above the registered services most
// machines run.
const lowest = 10000

// rangeFile holds the kernel's ephemeral range, "low high".
var rangeFile = "/proc/sys/net/ipv4/ip_local_port_range"

// Listen listens on TCP 127.0.0.1 at a free port below the kernel's
// ephemeral range, or at a kernel-chosen one when that range starts too low
// to leave room or no port below it is free.
func Listen() (net.Listener, error) {
	if hi := ephemeralLow(); hi-lowest >= 1000 {
		for range 100 {
			p := lowest + rand.IntN(hi-lowest)
			if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p))); err == nil {
				return l, nil
			}
		}
	}
	return net.Listen("tcp", "127.0.0.1:0")
}

// Relisten listens on addr again, a port a stopped server of the test had,
// retrying for up to within: the stopped server's process may take a moment
// to release it.
func Relisten(addr string, within time.Duration) (net.Listener, error) {
	for deadline := time.Now().Add(within); ; time.Sleep(10 * time.Millisecond) {
		l, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return l, err
		}
	}
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	b, _ := os.ReadFile(rangeFile)
	if f := strings.Fields(string(b)); len(f) > 0 {
		if n, err := strconv.Atoi(f[0]); err == nil {
			return n
		}
	}
	return 32768
}
