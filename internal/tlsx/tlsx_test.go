package tlsx_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx"
	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

func TestFiles_offWithoutFiles(t *testing.T) {
	var f tlsx.Files
	require.False(t, f.Enabled())
	s, err := f.Server()
	require.NoError(t, err)
	require.Nil(t, s)
	c, err := f.Client()
	require.NoError(t, err)
	require.Nil(t, c)
}

func TestFiles_badFilesNameTheFlag(t *testing.T) {
	set := tlstest.Write(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not a certificate"), 0o600))
	missing := filepath.Join(dir, "missing.pem")
	tests := []struct {
		name   string
		files  tlsx.Files
		server bool
		want   string
	}{
		{"server without a certificate", tlsx.Files{CA: set.Server.CA}, true, "-tls-cert: a server with TLS needs"},
		{"key without certificate", tlsx.Files{Key: set.Server.Key}, false, "-tls-cert: needed with -tls-key"},
		{"certificate without key", tlsx.Files{Cert: set.Server.Cert}, false, "-tls-key: needed with -tls-cert"},
		{"missing certificate", tlsx.Files{Cert: missing, Key: set.Server.Key}, true, "-tls-cert: stat " + missing},
		{"missing key", tlsx.Files{Cert: set.Server.Cert, Key: missing}, true, "-tls-key: stat " + missing},
		{"garbage certificate", tlsx.Files{Cert: garbage, Key: set.Server.Key}, true, "-tls-cert, -tls-key:"},
		{"key of another certificate", tlsx.Files{Cert: set.Server.Cert, Key: set.Client.Key}, true, "-tls-cert, -tls-key:"},
		{"missing CA", tlsx.Files{Cert: set.Server.Cert, Key: set.Server.Key, CA: missing}, true, "-tls-ca: open " + missing},
		{"garbage CA", tlsx.Files{CA: garbage}, false, "-tls-ca: " + garbage + " holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.server {
				_, err = tt.files.Server()
			} else {
				_, err = tt.files.Client()
			}
			require.ErrorContains(t, err, tt.want)
		})
	}
}

// TestIdentity_reloadSwapsTheCertificate: handshakes after Reload present
// the new pair; a reload that fails keeps the one in force.
func TestIdentity_reloadSwapsTheCertificate(t *testing.T) {
	set := tlstest.Write(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "c.pem"), filepath.Join(dir, "c-key.pem")
	install := func(cert, key string) {
		tlstest.Concat(t, certFile, cert)
		tlstest.Concat(t, keyFile, key)
	}
	oldCert, oldKey := set.Issue(t, "old", "127.0.0.1", "old.example")
	newCert, newKey := set.Issue(t, "new", "127.0.0.1", "new.example")
	install(oldCert, oldKey)
	id, err := tlsx.Files{Cert: certFile, Key: keyFile, CA: set.Server.CA}.Load()
	require.NoError(t, err)
	serverTLS, err := id.Server()
	require.NoError(t, err)
	lis, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS)
	require.NoError(t, err)
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	client, err := set.Client.Client()
	require.NoError(t, err)
	served := func() string {
		c, err := tls.Dial("tcp", lis.Addr().String(), client)
		require.NoError(t, err)
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].DNSNames[0]
	}
	require.Equal(t, "old.example", served())
	notAfter := id.NotAfter()
	require.False(t, notAfter.IsZero())

	install(newCert, newKey)
	require.NoError(t, id.Reload())
	require.Equal(t, "new.example", served())

	require.NoError(t, os.Remove(keyFile))
	require.ErrorContains(t, id.Reload(), "-tls-key: stat "+keyFile)
	require.Equal(t, "new.example", served(), "a failed reload keeps the pair in force")
}

func TestCollector_exportsTheCertificateInForce(t *testing.T) {
	set := tlstest.Write(t)
	id, err := set.Client.Load()
	require.NoError(t, err)
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(tlsx.Collector(id)))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs, 1)
	require.Equal(t, "hostscale_tls_certificate_not_after_timestamp_seconds", mfs[0].GetName())
	m := mfs[0].GetMetric()[0]
	require.Equal(t, set.Client.Cert, m.GetLabel()[0].GetValue())
	require.InDelta(t, float64(id.NotAfter().Unix()), m.GetGauge().GetValue(), 0)
	require.Greater(t, id.NotAfter(), time.Now())

	// Without a certificate (a CA only) there is nothing to export.
	caOnly, err := tlsx.Files{CA: set.Client.CA}.Load()
	require.NoError(t, err)
	reg = prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(tlsx.Collector(caOnly)))
	mfs, err = reg.Gather()
	require.NoError(t, err)
	require.Empty(t, mfs)
}

func TestHTTPServer_modes(t *testing.T) {
	set := tlstest.Write(t)
	id, err := set.Server.Load()
	require.NoError(t, err)
	noCA, err := tlsx.Files{Cert: set.Server.Cert, Key: set.Server.Key}.Load()
	require.NoError(t, err)
	caOnly, err := tlsx.Files{CA: set.Server.CA}.Load()
	require.NoError(t, err)

	for _, mode := range []string{"", tlsx.HTTPOff} {
		cfg, err := tlsx.HTTPServer(id, mode)
		require.NoError(t, err)
		require.Nil(t, cfg, "mode %q", mode)
	}
	on, err := tlsx.HTTPServer(id, tlsx.HTTPOn)
	require.NoError(t, err)
	require.Equal(t, tls.NoClientCert, on.ClientAuth)
	verify, err := tlsx.HTTPServer(id, tlsx.HTTPVerify)
	require.NoError(t, err)
	require.Equal(t, tls.RequireAnyClientCert, verify.ClientAuth)
	require.NotNil(t, verify.VerifyConnection)

	for _, c := range []struct {
		id   *tlsx.Identity
		mode string
		want string
	}{
		{id, "yes", `-http-tls: "yes": expected off, on or verify`},
		{nil, tlsx.HTTPOn, "-http-tls on: needs -tls-cert and -tls-key"},
		{caOnly, tlsx.HTTPVerify, "-http-tls verify: needs -tls-cert and -tls-key"},
		{noCA, tlsx.HTTPVerify, "-http-tls verify: needs -tls-ca"},
	} {
		_, err := tlsx.HTTPServer(c.id, c.mode)
		require.EqualError(t, err, c.want)
	}
}
