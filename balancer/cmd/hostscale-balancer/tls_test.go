package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hostscale/hostscale/internal/tlsx/tlstest"
)

var servingTLSRE = regexp.MustCompile(`msg="serving TLS" component=balancer addr=(\S+)`)

// TestBinary_servesHTTPSByServerNameAndReloadsCertificates: -tls-listen
// serves each client the certificate its server name asks for (exact,
// wildcard, or the first file's), tells the backend the request came over
// https, survives a plaintext client, exports each certificate's expiry,
// and SIGHUP loads new certificates or, when one is broken, keeps those in
// force.
func TestBinary_servesHTTPSByServerNameAndReloadsCertificates(t *testing.T) {
	set := tlstest.Write(t)
	dir := t.TempDir()
	aCert, aKey := set.Issue(t, "site-a", "a.example.com")
	bCert, bKey := set.Issue(t, "site-b", "*.b.example.com", "b.example.com")
	tlstest.Concat(t, filepath.Join(dir, "a.pem"), aCert, aKey)
	tlstest.Concat(t, filepath.Join(dir, "b.pem"), bCert, bKey)
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
	}))
	p, tlsAddr := startTLSBinary(t, be, dir)
	roots := caPool(t, set)
	// get asks tlsAddr for / as serverName and returns the body and the
	// names of the certificate it was served.
	get := func(serverName string) (string, []string, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: serverName}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + tlsAddr + "/")
		if err != nil {
			return "", nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body), resp.TLS.PeerCertificates[0].DNSNames, nil
	}
	body, names, err := get("a.example.com")
	require.NoError(t, err)
	require.Equal(t, "https", body)
	require.Equal(t, []string{"a.example.com"}, names)
	_, names, err = get("www.B.example.com")
	require.NoError(t, err)
	require.Contains(t, names, "*.b.example.com")
	_, names, err = get("b.example.com")
	require.NoError(t, err)
	require.Contains(t, names, "b.example.com")
	_, _, err = get("c.example.com")
	require.ErrorContains(t, err, "a.example.com", "no certificate names it: the first file's, which does not verify")
	code, body := get2(t, "http://"+p.proxy+"/")
	require.Equal(t, 200, code)
	require.Equal(t, "http", body, "plain HTTP stays http")

	// A plaintext client on the TLS port is dropped; HTTPS goes on.
	raw, err := net.Dial("tcp", tlsAddr)
	require.NoError(t, err)
	_, _ = raw.Write([]byte("GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"))
	_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, _ := bufio.NewReader(raw).ReadString('\n')
	raw.Close()
	require.NotContains(t, line, "200", "answered a plaintext request on the TLS port")
	_, _, err = get("a.example.com")
	require.NoError(t, err)

	code, metrics := get2(t, "http://"+p.admin+"/metrics")
	require.Equal(t, 200, code)
	require.Regexp(t, `hostscale_balancer_tls_certificate_not_after_timestamp_seconds\{file="`+regexp.QuoteMeta(filepath.Join(dir, "a.pem"))+`"\} \d`, metrics)

	// A new certificate, then a broken file: the first is served after
	// SIGHUP, the second leaves it in force.
	cCert, cKey := set.Issue(t, "site-c", "c.example.com")
	tlstest.Concat(t, filepath.Join(dir, "c.pem"), cCert, cKey)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool {
		_, names, err := get("c.example.com")
		return err == nil && names[0] == "c.example.com"
	}, 10*time.Second, 20*time.Millisecond, p.logs())
	require.NoError(t, os.WriteFile(filepath.Join(dir, "d.pem"), []byte("not a certificate"), 0o600))
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(p.logs(), "reload certificates") }, 10*time.Second, 10*time.Millisecond)
	require.Contains(t, p.logs(), filepath.Join(dir, "d.pem"))
	_, names, err = get("c.example.com")
	require.NoError(t, err)
	require.Equal(t, []string{"c.example.com"}, names)
}

// get2 is a GET over plain HTTP returning the status and the body.
func get2(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestBinary_tlsHTTP2: with -tls-http2, a client that offers HTTP/2 gets
// it; the backend gets HTTP/1.1; the access log and /metrics say so.
func TestBinary_tlsHTTP2(t *testing.T) {
	set := tlstest.Write(t)
	dir := t.TempDir()
	cert, key := set.Issue(t, "site", "a.example.com")
	tlstest.Concat(t, filepath.Join(dir, "a.pem"), cert, key)
	be := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto+" "+r.Header.Get("X-Forwarded-Proto"))
	}))
	logPath := filepath.Join(t.TempDir(), "access.log")
	p, tlsAddr := startTLSBinary(t, be, dir, "-tls-http2", "-http2-max-streams", "64", "-access-log", logPath)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool(t, set), ServerName: "a.example.com"}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + tlsAddr + "/h2")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "HTTP/2.0", resp.Proto)
	require.Equal(t, "HTTP/1.1 https", string(body))
	require.Eventually(t, func() bool {
		data, _ := os.ReadFile(logPath)
		return strings.Contains(string(data), `"GET /h2 HTTP/2.0" 200`)
	}, 10*time.Second, 20*time.Millisecond, "the access log line")
	code, metrics := get2(t, "http://"+p.admin+"/metrics")
	require.Equal(t, 200, code)
	require.Contains(t, metrics, "hostscale_balancer_http2_connections_total 1\n")
	require.Contains(t, metrics, "hostscale_balancer_http2_protocol_errors_total 0\n")
}

// startTLSBinary starts the binary with a table routing to be and
// -tls-listen serving the certificates in dir, with extra flags, and
// returns it and its TLS address.
func startTLSBinary(t *testing.T, be, dir string, extra ...string) (*proc, string) {
	t.Helper()
	args := append([]string{"-table", writeTable(t, t.TempDir(), tableJSON(1, be)), "-tls-listen", "127.0.0.1:0", "-tls-cert-dir", dir}, extra...)
	p := startBinary(t, args...)
	var tlsAddr string
	require.Eventually(t, func() bool {
		m := servingTLSRE.FindStringSubmatch(p.logs())
		if m != nil {
			tlsAddr = m[1]
		}
		return m != nil
	}, 10*time.Second, 10*time.Millisecond, p.logs())
	return p, tlsAddr
}

// caPool is the pool of set's CA, for clients of the binary.
func caPool(t *testing.T, set tlstest.Set) *x509.CertPool {
	t.Helper()
	caPEM, err := os.ReadFile(set.Server.CA)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(caPEM))
	return roots
}
