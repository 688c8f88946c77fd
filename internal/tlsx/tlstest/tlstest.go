// Package tlstest writes a throwaway CA and certificates signed by it, for
// tests of TLS between hostscale's binaries on loopback.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hostscale/hostscale/internal/tlsx"
)

// Set is a CA and two identities it signed: a server's, valid for
// 127.0.0.1, ::1 and localhost, and a client's.
type Set struct {
	Server, Client tlsx.Files
	// Other is a client identity from another CA, which the servers must
	// refuse; its CA is the other one's too.
	Other tlsx.Files

	dir   string
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

// Issue writes a server certificate of the Set's CA for hosts (DNS names,
// wildcards such as *.example.com, or IP addresses), and its key, as
// name.pem and name-key.pem; it returns their paths.
func (s Set) Issue(t testing.TB, name string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	return s.leaf(t, name, true, hosts)
}

// Write writes a Set's PEM files into a new directory of t's.
func Write(t testing.TB) Set {
	t.Helper()
	dir := t.TempDir()
	ca, caKey := authority(t, "hostscale test CA")
	other, otherKey := authority(t, "another CA")
	caFile := writeCert(t, filepath.Join(dir, "ca.pem"), ca)
	otherCA := writeCert(t, filepath.Join(dir, "other-ca.pem"), other)
	s := Set{dir: dir, ca: ca, caKey: caKey}
	leaf := func(name string, signer *x509.Certificate, signerKey *ecdsa.PrivateKey, server bool) (string, string) {
		return sign(t, dir, name, signer, signerKey, server, []string{"127.0.0.1", "::1", "localhost"})
	}
	s.Server.Cert, s.Server.Key = leaf("server", ca, caKey, true)
	s.Server.CA = caFile
	s.Client.Cert, s.Client.Key = leaf("client", ca, caKey, false)
	s.Client.CA = caFile
	s.Other.Cert, s.Other.Key = leaf("intruder", other, otherKey, false)
	s.Other.CA = otherCA
	return s
}

func (s Set) leaf(t testing.TB, name string, server bool, hosts []string) (string, string) {
	return sign(t, s.dir, name, s.ca, s.caKey, server, hosts)
}

// sign writes a certificate for hosts signed by signer, and its key.
func sign(t testing.TB, dir, name string, signer *x509.Certificate, signerKey *ecdsa.PrivateKey, server bool, hosts []string) (string, string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeCert(t, filepath.Join(dir, name+".pem"), cert)
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, name+"-key.pem")
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// Concat writes the contents of srcs, in order, to dst: a certificate
// and its key in one file, as a balancer's -tls-cert-dir takes them, or a
// new pair over the files a running process reads, as a rotation does.
func Concat(t testing.TB, dst string, srcs ...string) {
	t.Helper()
	var all []byte
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(dst, all, 0o600); err != nil {
		t.Fatal(err)
	}
}

func authority(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writeCert(t testing.TB, path string, c *x509.Certificate) string {
	writePEM(t, path, "CERTIFICATE", c.Raw)
	return path
}

func writePEM(t testing.TB, path, kind string, der []byte) {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
