// Package sighup runs a daemon's reloads on SIGHUP, as Nomad, Consul and
// nginx reload theirs.
package sighup

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Reloads is a process's registration for SIGHUP.
type Reloads struct {
	ch chan os.Signal
}

// Notify registers the process for SIGHUP. Call it before the process
// starts anything: from then on a SIGHUP, which log rotation sends to
// every daemon and whose default action ends a process, waits for Run,
// which reloads once for the signals that came before it.
func Notify() *Reloads {
	r := &Reloads{ch: make(chan os.Signal, 1)}
	signal.Notify(r.ch, syscall.SIGHUP)
	return r
}

// Stop ends the registration; SIGHUP then has its default action again.
// Run stops it too when it returns.
func (r *Reloads) Stop() { signal.Stop(r.ch) }

// Run calls each of reloads that is not nil, in order, on every SIGHUP
// until ctx ends, and then stops the registration. With none, it logs
// that a SIGHUP has nothing to reload.
func (r *Reloads) Run(ctx context.Context, logger *slog.Logger, reloads ...func()) {
	defer signal.Stop(r.ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.ch:
		}
		ran := false
		for _, f := range reloads {
			if f != nil {
				f()
				ran = true
			}
		}
		if !ran {
			logger.Info("SIGHUP: nothing to reload")
		}
	}
}
