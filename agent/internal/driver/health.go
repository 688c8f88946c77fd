package driver

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Health check timing: a check never takes longer than maxCheckTimeout
// (nor than the interval), and until an instance first passes it is
// checked every startPoll (or its interval, if shorter) so that a fast
// starter is HEALTHY at once.
const (
	maxCheckTimeout = 2 * time.Second
	startPoll       = 100 * time.Millisecond
)

// newHealthClient returns the client of HTTP health checks: no proxy from
// the environment (the instance is local), no connection reuse (each
// check is one short request and leaves nothing behind), and redirects
// not followed (a 3xx passes).
func newHealthClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// check runs one health check of the instance at addr: an HTTP GET of
// path answered 2xx or 3xx, or, when path is empty, a TCP connection
// accepted.
func check(ctx context.Context, client *http.Client, addr, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if path == "" {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return nil
}
