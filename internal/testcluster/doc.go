// Package testcluster starts hostscale controller clusters on loopback for
// tests: N nodes on free loopback ports (outside the kernel's ephemeral
// range, so that a restarted node gets its ports back: see freeport) and
// data in t.TempDir(), either as real hostscale-controller processes
// (BinaryLauncher) or in-process through a Launcher the controller module
// provides. It waits for a leader, kills, stops, restarts, removes and adds
// nodes, and tears everything down when the test ends, leaving no process
// or goroutine behind.
//
// On a Net (NewNet), each controller runs in a network namespace of its
// own, with its own address, so that a test can partition the cluster:
// packets between the sides are dropped, as on a real network.
//
// The harness depends on no controller package: a Launcher is the seam, so
// that every module's integration tests can use it.
package testcluster
