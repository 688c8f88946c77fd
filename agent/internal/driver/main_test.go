package driver

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The instances of these tests are this test binary run again with
// DRIVER_TEST_APP naming what to do:
//
//	serve     an HTTP server on 127.0.0.1:$PORT; / answers
//	          "$HOSTSCALE_INSTANCE $HOSTSCALE_POOL $HOSTSCALE_NODE", /health
//	          200 (503 while a file "unhealthy" is in its working directory);
//	          SIGTERM or SIGINT make it print "got signal ...", wait
//	          DRIVER_TEST_STOP_DELAY (a duration, default none) and exit 0
//	slowstop  serve, but ignoring SIGTERM
//	spin      serve, while busy-looping on one core
//	hog       serve, while taking 4 MiB more memory every 10ms, up to 1 GiB
//	exit1     exit with code 1 at once
//
// DRIVER_TEST_SPAM=n makes it write n bytes to stdout and to stderr first.
const (
	envApp       = "DRIVER_TEST_APP"
	envSpam      = "DRIVER_TEST_SPAM"
	envStopDelay = "DRIVER_TEST_STOP_DELAY"
	envParent    = "DRIVER_TEST_PARENT" // the test process; an app exits when it is gone
	envTest      = "DRIVER_TEST_NAME"   // the test that started an app
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envApp); mode != "" {
		os.Exit(runApp(mode))
	}
	// Every instance inherits the test process's environment.
	_ = os.Setenv(envParent, strconv.Itoa(os.Getpid()))
	// Under -race, an app would otherwise sleep a second before it exits.
	_ = os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
		if pids := appProcesses(""); len(pids) > 0 {
			fmt.Fprintf(os.Stderr, "instances left running: %v\n", pids)
			code = 1
		}
	}
	os.Exit(code)
}

func runApp(mode string) int {
	go orphanWatch()
	switch mode {
	case "exit1":
		fmt.Fprintln(os.Stderr, "failing on purpose")
		return 1
	case "slowstop":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
	case "serve", "spin", "hog":
		switch mode {
		case "spin":
			go spin()
		case "hog":
			go hog()
		}
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		go func() {
			s := <-ch
			fmt.Printf("got signal %v\n", s)
			if delay, err := time.ParseDuration(os.Getenv(envStopDelay)); err == nil {
				time.Sleep(delay)
			}
			os.Exit(0)
		}()
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", envApp, mode)
		return 2
	}
	if n, _ := strconv.Atoi(os.Getenv(envSpam)); n > 0 {
		line := strings.Repeat("x", 99) + "\n"
		b := []byte(strings.Repeat(line, n/len(line)+1)[:n])
		_, _ = os.Stdout.Write(b)
		_, _ = os.Stderr.Write(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := os.Stat("unhealthy"); err == nil {
			http.Error(w, "unhealthy", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "%s %s %s", os.Getenv("HOSTSCALE_INSTANCE"), os.Getenv("HOSTSCALE_POOL"), os.Getenv("HOSTSCALE_NODE"))
	})
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", os.Getenv("PORT")))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Fprintln(os.Stderr, http.Serve(ln, mux))
	return 2
}

// spinSink keeps spin's loop from being optimized away.
var spinSink atomic.Uint64

// spin keeps one core busy until the process exits.
func spin() {
	for i := uint64(0); ; i++ {
		spinSink.Store(i)
	}
}

// hogged keeps hog's memory reachable.
var hogged [][]byte

// hog takes memory, touching every page, until it has 1 GiB.
func hog() {
	for range 256 {
		b := make([]byte, 4<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		hogged = append(hogged, b)
		time.Sleep(10 * time.Millisecond)
	}
}

// orphanWatch ends an app whose test process is gone, or that ran for
// too long, so that a crashed test run leaves nothing behind.
func orphanWatch() {
	parent, _ := strconv.Atoi(os.Getenv(envParent))
	deadline := time.Now().Add(2 * time.Minute)
	for range time.Tick(200 * time.Millisecond) {
		if parent <= 0 || syscall.Kill(parent, 0) != nil || time.Now().After(deadline) {
			os.Exit(3)
		}
	}
}

// appProcesses returns the pids of the live (not zombie) apps this test
// process started, for the test named test, or for every test when test
// is empty.
func appProcesses(test string) []int {
	want := envParent + "=" + strconv.Itoa(os.Getpid())
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil {
			continue
		}
		env := strings.Split(string(b), "\x00")
		if !slices.Contains(env, want) || !slices.ContainsFunc(env, isApp) ||
			test != "" && !slices.Contains(env, envTest+"="+test) {
			continue
		}
		if _, state, err := readStat(pid); err != nil || state == 'Z' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func isApp(kv string) bool { return strings.HasPrefix(kv, envApp+"=") }
