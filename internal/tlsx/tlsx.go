// Package tlsx builds the TLS configurations of hostscale's gRPC servers
// and clients from PEM files: a certificate and its key, and the CA that
// signs the peers' certificates. A server given a CA requires and verifies
// a client certificate signed by it (mutual TLS, as Nomad and Consul run
// their RPC); a client verifies the server's certificate against the CA
// (the system's roots without one) and the host it dials, and presents its
// own certificate when it has one.
package tlsx

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// Files names the PEM files of one TLS identity. The fields are named
// after the flags that set them (-tls-cert, -tls-key, -tls-ca), and errors
// name the flag.
type Files struct {
	Cert, Key, CA string
}

// Enabled reports whether any file is set: TLS is on.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// keyPair loads Cert and Key, which must be both set or both empty.
func (f Files) keyPair() ([]tls.Certificate, error) {
	switch {
	case f.Cert == "" && f.Key == "":
		return nil, nil
	case f.Cert == "":
		return nil, errors.New("-tls-cert: needed with -tls-key")
	case f.Key == "":
		return nil, errors.New("-tls-key: needed with -tls-cert")
	}
	for _, file := range [...]struct{ flag, path string }{{"-tls-cert", f.Cert}, {"-tls-key", f.Key}} {
		if _, err := os.Stat(file.path); err != nil {
			return nil, fmt.Errorf("%s: %w", file.flag, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert, -tls-key: %w", err)
	}
	return []tls.Certificate{pair}, nil
}

// pool loads the CA file; nil without one.
func (f Files) pool() (*x509.CertPool, error) {
	if f.CA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("-tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-tls-ca: %s holds no PEM certificate", f.CA)
	}
	return pool, nil
}

// Identity is a loaded TLS identity whose certificate, key and CA can be
// reloaded (on SIGHUP, say) without a restart: handshakes after Reload
// present the new pair and check peers against the new CA.
type Identity struct {
	files Files
	pair  atomic.Pointer[tls.Certificate]
	pool  atomic.Pointer[x509.CertPool]
}

// Load loads the files; nil when TLS is off.
func (f Files) Load() (*Identity, error) {
	if !f.Enabled() {
		return nil, nil
	}
	id := &Identity{files: f}
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	if certs != nil {
		id.pair.Store(&certs[0])
	}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	id.pool.Store(pool)
	return id, nil
}

// Reload reads the certificate and its key, and the CA, again. What fails
// to load stays as it was: a bad key file keeps the pair in force, a bad
// CA file the CA in force. An identity loaded without a certificate, or
// without a CA, stays without.
//
// A CA file may hold several certificates, all trusted: a CA is rotated by
// adding the new one beside the old, reloading every process, moving each
// to a certificate of the new one, and then dropping the old.
func (id *Identity) Reload() error {
	var errs []error
	if id.pair.Load() != nil {
		if certs, err := id.files.keyPair(); err != nil {
			errs = append(errs, err)
		} else {
			id.pair.Store(&certs[0])
		}
	}
	if id.pool.Load() != nil {
		if pool, err := id.files.pool(); err != nil {
			errs = append(errs, err)
		} else {
			id.pool.Store(pool)
		}
	}
	return errors.Join(errs...)
}

// NotAfter is when the certificate in force expires; zero without one.
func (id *Identity) NotAfter() time.Time {
	p := id.pair.Load()
	if p == nil || len(p.Certificate) == 0 {
		return time.Time{}
	}
	leaf, err := x509.ParseCertificate(p.Certificate[0])
	if err != nil {
		return time.Time{}
	}
	return leaf.NotAfter
}

// Server returns a server's configuration. A server needs a certificate
// and its key; with a CA it requires client certificates signed by it.
// Each handshake presents the pair in force and checks the client against
// the CA in force, so one configuration serves across reloads.
func (id *Identity) Server() (*tls.Config, error) {
	if id.pair.Load() == nil {
		return nil, errors.New("-tls-cert: a server with TLS needs its certificate and key")
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return id.pair.Load(), nil },
	}
	if id.pool.Load() != nil {
		// crypto/tls checks client certificates against a fixed
		// ClientCAs; this is its RequireAndVerifyClientCert with the CA
		// read at each handshake.
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: client sent no certificate")
			}
			opts := x509.VerifyOptions{
				Roots:         id.pool.Load(),
				Intermediates: x509.NewCertPool(),
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("tls: client certificate: %w", err)
			}
			return nil
		}
	}
	return cfg, nil
}

// Client returns a client's configuration. It verifies servers against
// the CA in force, or the system's roots without one, and presents the
// certificate in force when there is one. The CA is fixed in the
// configuration returned: a process that reloads its CA calls Client for
// each new connection (grpcx.WithTLSFunc).
func (id *Identity) Client() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    id.pool.Load(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if p := id.pair.Load(); p != nil {
				return p, nil
			}
			return &tls.Certificate{}, nil
		},
	}
}

// Server returns a server's configuration; nil when TLS is off. A server
// needs a certificate and its key; with a CA it requires client
// certificates signed by it.
func (f Files) Server() (*tls.Config, error) {
	id, err := f.Load()
	if id == nil || err != nil {
		return nil, err
	}
	return id.Server()
}

// Client returns a client's configuration; nil when TLS is off. It
// verifies servers against the CA, or the system's roots without one, and
// presents the certificate when one is set.
func (f Files) Client() (*tls.Config, error) {
	id, err := f.Load()
	if id == nil || err != nil {
		return nil, err
	}
	return id.Client(), nil
}

// HTTP modes of a binary's -http-tls flag, for its operational endpoints
// (/metrics, /healthz, /readyz), as Nomad's tls http and
// verify_https_client.
const (
	// HTTPOff serves them in plaintext.
	HTTPOff = "off"
	// HTTPOn serves them over HTTPS with the process's certificate and
	// asks no client certificate: a scraper or a health checker needs
	// only to trust the CA.
	HTTPOn = "on"
	// HTTPVerify also requires a client certificate signed by the CA.
	HTTPVerify = "verify"
)

// HTTPServer returns the TLS configuration of the operational endpoints
// for mode (nil for HTTPOff), with id's certificate in force and, for
// HTTPVerify, its CA in force. Errors name the flag.
func HTTPServer(id *Identity, mode string) (*tls.Config, error) {
	switch mode {
	case HTTPOff, "":
		return nil, nil
	case HTTPOn, HTTPVerify:
	default:
		return nil, fmt.Errorf("-http-tls: %q: expected %s, %s or %s", mode, HTTPOff, HTTPOn, HTTPVerify)
	}
	if id == nil || id.pair.Load() == nil {
		return nil, fmt.Errorf("-http-tls %s: needs -tls-cert and -tls-key", mode)
	}
	if mode == HTTPVerify && id.pool.Load() == nil {
		return nil, fmt.Errorf("-http-tls %s: needs -tls-ca", mode)
	}
	cfg, err := id.Server()
	if err != nil {
		return nil, err
	}
	if mode == HTTPOn {
		cfg.ClientAuth, cfg.VerifyConnection = tls.NoClientCert, nil
	}
	cfg.NextProtos = []string{"http/1.1"}
	return cfg, nil
}
