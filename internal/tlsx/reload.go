package tlsx

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// ReloadOnSIGHUP reloads id's certificate and key on every SIGHUP until
// ctx ends, logging the outcome: rotating a certificate needs no restart,
// as with Nomad and Consul. A failed reload keeps the pair in force.
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
		if err := id.Reload(); err != nil {
			logger.Error("reload TLS certificate; the one in force stays", "err", err)
			continue
		}
		logger.Info("TLS certificate reloaded", "cert", id.files.Cert, "not_after", id.NotAfter())
	}
}
