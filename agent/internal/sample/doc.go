// Package sample reads the host's resources with gopsutil and turns them
// into hostscale.v1 Samples and NodeFacts.
//
// It owns measuring only: rates computed from counter deltas, the choice of
// which filesystems, disks and network interfaces count. It never sends,
// buffers or decides anything about what it measured.
package sample
