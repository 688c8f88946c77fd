package balancer

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

func TestCertStore_picksByServerName(t *testing.T) {
	set := tlstest.Write(t)
	dir := t.TempDir()
	write := func(name string, hosts ...string) {
		c, k := set.Issue(t, name, hosts...)
		tlstest.Concat(t, filepath.Join(dir, name+".pem"), c, k)
	}
	write("1-default", "default.example")
	write("2-wild", "*.shop.example", "shop.example")
	write("3-exact", "www.shop.example")
	s, err := LoadCerts(dir)
	require.NoError(t, err)
	pick := func(name string) string {
		c, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: name})
		require.NoError(t, err)
		return c.Leaf.DNSNames[0]
	}
	require.Equal(t, "www.shop.example", pick("www.shop.example"), "an exact name beats the wildcard")
	require.Equal(t, "www.shop.example", pick("WWW.Shop.Example."), "case and a trailing dot do not matter")
	require.Equal(t, "*.shop.example", pick("cart.shop.example"))
	require.Equal(t, "*.shop.example", pick("shop.example"))
	require.Equal(t, "default.example", pick("a.b.shop.example"), "a wildcard covers one label only")
	require.Equal(t, "default.example", pick(""), "no server name: the first file's")
	require.Len(t, s.Certs(), 3)
	require.Equal(t, filepath.Join(dir, "1-default.pem"), s.Certs()[0].File)

	// A file without its key stops the reload; the certificates stay.
	c, _ := set.Issue(t, "keyless", "keyless.example")
	data, err := os.ReadFile(c)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "4-keyless.pem"), data, 0o600))
	require.ErrorContains(t, s.Reload(), "4-keyless.pem: want a certificate and its private key")
	require.Len(t, s.Certs(), 3)
	require.Equal(t, "*.shop.example", pick("cart.shop.example"))
}
