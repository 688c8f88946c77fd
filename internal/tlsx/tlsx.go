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

// Server returns a server's configuration; nil when TLS is off. A server
// needs a certificate and its key; with a CA it requires client
// certificates signed by it.
func (f Files) Server() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	if certs == nil {
		return nil, errors.New("-tls-cert: a server with TLS needs its certificate and key")
	}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
	if pool != nil {
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Client returns a client's configuration; nil when TLS is off. It
// verifies servers against the CA, or the system's roots without one, and
// presents the certificate when one is set.
func (f Files) Client() (*tls.Config, error) {
	if !f.Enabled() {
		return nil, nil
	}
	certs, err := f.keyPair()
	if err != nil {
		return nil, err
	}
	pool, err := f.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: certs, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
