package tlsx

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// ReloadOnSIGHUP reloads id's certificate, key and CA on every SIGHUP
// until ctx ends, logging the outcome: rotating a certificate or a CA needs
// no restart, as with Nomad and Consul. What fails to load stays as it was.
// With a nil id (TLS off) it only logs: a SIGHUP, as a log rotation's
// postrotate sends to every daemon, never stops the process.
func ReloadOnSIGHUP(ctx context.Context, id *Identity, logger *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if id == nil {
			logger.Info("SIGHUP: no TLS files to reload")
			continue
		}
		if err := id.Reload(); err != nil {
			logger.Error("reload TLS files; what failed to load stays as it was", "err", err)
			continue
		}
		logger.Info("TLS files reloaded", "cert", id.files.Cert, "ca", id.files.CA, "not_after", id.NotAfter())
	}
}
