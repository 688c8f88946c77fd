package balancer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// CertStore holds the certificates a TLS listener serves, loaded from a
// directory of PEM files each holding a certificate chain and its private
// key, as HAProxy's `crt <dir>` does. A client's server name (SNI) picks
// the certificate naming it exactly, else one whose wildcard
// (*.example.com) covers it, else the default: the first file's, in name
// order. Reload swaps in a new directory's contents at once, or keeps the
// certificates in force when any file is bad. It is safe for concurrent
// use.
type CertStore struct {
	dir string
	cur atomic.Pointer[certSet]
}

// CertInfo describes one loaded certificate.
type CertInfo struct {
	File     string
	Names    []string
	NotAfter time.Time
}

type certSet struct {
	exact map[string]*tls.Certificate
	// wild is keyed by what follows "*." in a wildcard name.
	wild  map[string]*tls.Certificate
	def   *tls.Certificate
	infos []CertInfo
}

// LoadCerts loads the *.pem files of dir.
func LoadCerts(dir string) (*CertStore, error) {
	s := &CertStore{dir: dir}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload loads the directory again; on an error the certificates in force
// stay. The error names the directory or the file.
func (s *CertStore) Reload() error {
	set, err := loadCertSet(s.dir)
	if err != nil {
		return err
	}
	s.cur.Store(set)
	return nil
}

// Certs describes the certificates in force, in file name order.
func (s *CertStore) Certs() []CertInfo { return slices.Clone(s.cur.Load().infos) }

// GetCertificate picks the certificate for a handshake (tls.Config's
// GetCertificate).
func (s *CertStore) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := s.cur.Load()
	name := strings.TrimSuffix(strings.ToLower(hello.ServerName), ".")
	if c := set.exact[name]; c != nil {
		return c, nil
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if c := set.wild[name[i+1:]]; c != nil {
			return c, nil
		}
	}
	return set.def, nil
}

// TLSConfig is a server configuration serving the store's certificates:
// TLS 1.2 and up, HTTP/1.1 by ALPN.
func (s *CertStore) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
}

func loadCertSet(dir string) (*certSet, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.pem"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if len(files) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: no .pem file", dir)
	}
	slices.Sort(files)
	set := &certSet{exact: map[string]*tls.Certificate{}, wild: map[string]*tls.Certificate{}}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(data, data)
		if err != nil {
			return nil, fmt.Errorf("%s: want a certificate and its private key: %w", f, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		pair.Leaf = leaf
		if len(leaf.DNSNames) == 0 {
			return nil, fmt.Errorf("%s: the certificate names no DNS host (subject alternative names)", f)
		}
		for _, n := range leaf.DNSNames {
			n = strings.ToLower(n)
			if rest, ok := strings.CutPrefix(n, "*."); ok {
				if set.wild[rest] == nil {
					set.wild[rest] = &pair
				}
			} else if set.exact[n] == nil {
				set.exact[n] = &pair
			}
		}
		if set.def == nil {
			set.def = &pair
		}
		set.infos = append(set.infos, CertInfo{File: f, Names: slices.Clone(leaf.DNSNames), NotAfter: leaf.NotAfter})
	}
	if set.def == nil {
		return nil, errors.New(dir + ": no certificate")
	}
	return set, nil
}
