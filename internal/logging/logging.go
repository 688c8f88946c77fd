// Package logging builds the slog logger of a hostscale binary and adapts
// hashicorp's hclog (used by raft and raft-wal) to it, so that a process
// writes one structured log stream.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Options are the logging flags every binary takes.
type Options struct {
	// Level: debug, info, warn or error.
	Level string
	// Format: text or json.
	Format string
}

// New returns a logger writing to w, tagged with the component and the
// process's identity attrs: the agent's node, a controller's member id (a
// controller's own lines name nodes too, so it must not call itself one).
func New(w io.Writer, o Options, component string, identity ...any) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.Level)); err != nil {
		return nil, fmt.Errorf("-log-level: %q is not one of debug, info, warn, error", o.Level)
	}
	ho := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch strings.ToLower(o.Format) {
	case "text", "":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		return nil, fmt.Errorf("-log-format: %q is not one of text, json", o.Format)
	}
	return slog.New(h).With(append([]any{"component", component}, identity...)...), nil
}

// OrDiscard returns l, or a logger that discards everything when l is nil.
func OrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
