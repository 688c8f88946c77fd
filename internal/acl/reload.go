package acl

import "log/slog"

// Reloader returns what reads the ACL file f and the token file tok again
// on a SIGHUP (sighup.Reloads.Run), logging the outcome; either may be
// nil, and with both nil it returns nil. A file that fails to load keeps
// what it held: a typo in the ACL file never locks every client out.
func Reloader(f *File, tok *TokenFile, logger *slog.Logger) func() {
	if f == nil && tok == nil {
		return nil
	}
	return func() {
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
