package acl

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// ReloadOnSIGHUP reads the ACL file f and the token file tok again on
// every SIGHUP until ctx ends, logging the outcome; either may be nil. A
// file that fails to load keeps what it held: a typo in the ACL file
// never locks every client out.
func ReloadOnSIGHUP(ctx context.Context, f *File, tok *TokenFile, logger *slog.Logger) {
	if f == nil && tok == nil {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if f != nil {
			if err := f.Reload(); err != nil {
				logger.Error("reload the ACL file; its tokens stay as they were", "err", err)
			} else {
				logger.Info("ACL file reloaded", "file", f.Path(), "tokens", f.Tokens().Len())
			}
		}
		if tok != nil {
			if err := tok.Reload(); err != nil {
				logger.Error("reload the token file; the token stays as it was", "err", err)
			} else {
				logger.Info("token file reloaded", "file", tok.Path())
			}
		}
	}
}
