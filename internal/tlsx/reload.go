package tlsx

import "log/slog"

// Reloader returns what reloads id's certificate, key and CA on a SIGHUP
// (sighup.Reloads.Run), logging the outcome: rotating a certificate or a
// CA needs no restart, as with Nomad and Consul. What fails to load stays
// as it was. With a nil id (TLS off) it returns nil.
func Reloader(id *Identity, logger *slog.Logger) func() {
	if id == nil {
		return nil
	}
	return func() {
		if err := id.Reload(); err != nil {
			logger.Error("reload TLS files; what failed to load stays as it was", "err", err)
			return
		}
		logger.Info("TLS files reloaded", "cert", id.files.Cert, "ca", id.files.CA, "not_after", id.NotAfter())
	}
}
