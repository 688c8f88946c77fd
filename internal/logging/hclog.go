package logging

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strconv"

	"github.com/hashicorp/go-hclog"
)

// HCLog adapts l to hclog.Logger. Levels map one to one (trace becomes
// debug); hclog's level setters are ignored: l's handler decides.
func HCLog(l *slog.Logger, name string) hclog.Logger {
	return &hcAdapter{l: OrDiscard(l).With("subsystem", name), name: name}
}

type hcAdapter struct {
	l    *slog.Logger
	name string
	args []any
}

var _ hclog.Logger = (*hcAdapter)(nil)

func level(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (a *hcAdapter) Log(lvl hclog.Level, msg string, args ...any) {
	ctx := context.Background()
	if a.l.Enabled(ctx, level(lvl)) {
		a.l.Log(ctx, level(lvl), msg, values(args)...)
	}
}

// values renders hclog's formatting types as hclog itself does (Raft logs
// its configuration with hclog.Fmt); slog would print their parts.
func values(args []any) []any {
	var out []any
	for i, v := range args {
		var s string
		switch v := v.(type) {
		case hclog.Format:
			if len(v) > 0 {
				f, _ := v[0].(string)
				s = fmt.Sprintf(f, v[1:]...)
			}
		case hclog.Hex:
			s = "0x" + strconv.FormatUint(uint64(v), 16)
		case hclog.Octal:
			s = "0" + strconv.FormatUint(uint64(v), 8)
		case hclog.Binary:
			s = "0b" + strconv.FormatUint(uint64(v), 2)
		case hclog.Quote:
			s = string(v)
		case hclog.CapturedStacktrace:
			s = string(v)
		default:
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		out[i] = s
	}
	if out == nil {
		return args
	}
	return out
}
func (a *hcAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hcAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hcAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hcAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hcAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }
func (a *hcAdapter) enabled(lvl hclog.Level) bool {
	return a.l.Enabled(context.Background(), level(lvl))
}
func (a *hcAdapter) IsTrace() bool         { return a.enabled(hclog.Trace) }
func (a *hcAdapter) IsDebug() bool         { return a.enabled(hclog.Debug) }
func (a *hcAdapter) IsInfo() bool          { return a.enabled(hclog.Info) }
func (a *hcAdapter) IsWarn() bool          { return a.enabled(hclog.Warn) }
func (a *hcAdapter) IsError() bool         { return a.enabled(hclog.Error) }
func (a *hcAdapter) ImpliedArgs() []any    { return a.args }
func (a *hcAdapter) Name() string          { return a.name }
func (a *hcAdapter) SetLevel(hclog.Level)  {}
func (a *hcAdapter) GetLevel() hclog.Level { return hclog.NoLevel }
func (a *hcAdapter) With(args ...any) hclog.Logger {
	return &hcAdapter{l: a.l.With(values(args)...), name: a.name, args: append(append([]any{}, a.args...), args...)}
}
func (a *hcAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}
func (a *hcAdapter) ResetNamed(name string) hclog.Logger {
	return &hcAdapter{l: a.l.With("subsystem", name), name: name, args: a.args}
}
func (a *hcAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(a.l.Handler(), slog.LevelInfo)
}
func (a *hcAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return a.StandardLogger(nil).Writer()
}
