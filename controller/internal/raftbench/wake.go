package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hostscale/hostscale/internal/grpcx"
)

// wakeIdles are the idle times runWake measures after: none (back to
// back), less than a Raft log write, and more.
var wakeIdles = []time.Duration{0, 100 * time.Microsecond, 2 * time.Millisecond}

// runWake measures what a hop costs on this machine, first without
// hostscale: a one-byte round trip between two goroutines over loopback
// TCP; then a gRPC unary call (grpc.health.v1 Check) between a server and
// client built as every hostscale binary builds them (grpcx), in this
// process and to a server in another process (this program run again), as
// a client and controllers on their own hosts call each other. Each is
// measured back to back and after the caller idled, which lets the other
// side's threads and cores go to sleep. Every hop of an API write (client
// to server, follower to leader, and Raft's own) pays the idle case when
// one client writes. Each row is calls calls.
func runWake(w io.Writer, calls int) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "hop\tsleep before (measured mean)\tp50\tp90\tmean\t")
	for _, h := range wakeHops {
		call, stop := h.start()
		for _, idle := range wakeIdles {
			st := timeCalls(calls, idle, call)
			fmt.Fprintf(tw, "%s\t%v (%v)\t%v\t%v\t%v\t\n", h.name, idle, st.idled.Round(time.Microsecond),
				st.p50.Round(100*time.Nanosecond), st.p90.Round(100*time.Nanosecond), st.mean.Round(100*time.Nanosecond))
		}
		// Each hop ends before the next starts: its goroutines and
		// threads are not around to take the cores' wake-ups.
		stop()
	}
	tw.Flush()
}

// wakeHops are the hops runWake times, each started by start, which
// returns one call and what stops the hop.
var wakeHops = []struct {
	name  string
	start func() (call, stop func())
}{
	{"loopback round trip", rawEcho},
	{"gRPC unary call", grpcCheck},
	{"gRPC unary call, grpc-go's defaults", plainCheck},
	{"gRPC unary call to another process", grpcCheckProcess},
}

// callTimes are the figures of timeCalls.
type callTimes struct{ idled, p50, p90, mean time.Duration }

// timeCalls times n calls of call, each after sleeping idle.
func timeCalls(n int, idle time.Duration, call func()) callTimes {
	var lat []time.Duration
	var idled, sum time.Duration
	for range n {
		if idle > 0 {
			s := time.Now()
			time.Sleep(idle)
			idled += time.Since(s)
		}
		s := time.Now()
		call()
		d := time.Since(s)
		lat = append(lat, d)
		sum += d
	}
	slices.Sort(lat)
	return callTimes{idled: idled / time.Duration(n), p50: lat[n/2], p90: lat[n*9/10], mean: sum / time.Duration(n)}
}

// rawEcho starts a one-byte echo on loopback TCP and returns a call that
// makes one round trip through it. The echo lives until the process ends.
func rawEcho() (call, stop func()) {
	l := listen()
	go func() {
		c, err := l.Accept()
		l.Close()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		log.Fatal(err)
	}
	b := make([]byte, 1)
	return func() {
		if _, err := c.Write(b); err != nil {
			log.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			log.Fatal(err)
		}
	}, func() { c.Close() }
}

// grpcCheck starts a grpcx server on loopback and returns a call that
// makes one health Check through a grpcx client connection to it.
func grpcCheck() (call, stop func()) {
	s, l := startCheckServer()
	c, stopClient := checkCall(l.Addr().String())
	return c, func() { stopClient(); s.Stop() }
}

// plainCheck is grpcCheck with grpc-go's own defaults on both ends instead
// of grpcx's options and interceptors: what grpc-go costs by itself.
func plainCheck() (call, stop func()) {
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	l := listen()
	go func() { _ = s.Serve(l) }()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	return check(conn), func() { conn.Close(); s.Stop() }
}

// startCheckServer starts a grpcx server, with its health service, on a
// loopback port.
func startCheckServer() (*grpcx.Server, net.Listener) {
	s, err := grpcx.NewServer(grpcx.DefaultServerConfig())
	if err != nil {
		log.Fatal(err)
	}
	l := listen()
	go func() { _ = s.Server.Serve(l) }()
	return s, l
}

// checkCall returns a call that makes one health Check through a grpcx
// client connection to addr, and what closes the connection.
func checkCall(addr string) (call, stop func()) {
	conn, err := grpcx.Dial(addr)
	if err != nil {
		log.Fatal(err)
	}
	return check(conn), func() { conn.Close() }
}

// check returns a call that makes one health Check on conn.
func check(conn *grpc.ClientConn) func() {
	hc := healthpb.NewHealthClient(conn)
	req := &healthpb.HealthCheckRequest{}
	return func() {
		if _, err := hc.Check(context.Background(), req); err != nil {
			log.Fatal(err)
		}
	}
}

// wakePeerEnv, set in its environment, makes this program a peer of
// grpcCheckProcess: servePeer instead of main.
const wakePeerEnv = "RAFTBENCH_WAKE_PEER"

// grpcCheckProcess runs this program again as a check server (servePeer)
// and returns a call to it, and what ends the process.
func grpcCheckProcess() (call, stop func()) {
	exe, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), wakePeerEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		log.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		log.Fatalf("wake peer: %v", err)
	}
	c, stopClient := checkCall(strings.TrimSpace(addr))
	return c, func() {
		stopClient()
		in.Close()
		_ = cmd.Wait()
	}
}

// servePeer serves health checks on a loopback port, which it prints, until
// its standard input closes (its parent ended or is done).
func servePeer() {
	s, l := startCheckServer()
	fmt.Println(l.Addr().String())
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Stop()
}
