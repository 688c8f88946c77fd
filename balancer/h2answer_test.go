package balancer

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

// relay writes answer to a fresh h1Answer in the parts split gives and
// returns the recorder, the answer's final state and the first error.
func relay(answer string, head bool, split func(i int) bool) (*httptest.ResponseRecorder, *h1Answer, error) {
	rec := httptest.NewRecorder()
	a := &h1Answer{w: rec, head: head, maxHead: 4096, maxHeaders: 32}
	start := 0
	for i := 1; i <= len(answer); i++ {
		if i == len(answer) || split(i) {
			if err := a.write([]byte(answer[start:i])); err != nil {
				return rec, a, err
			}
			start = i
		}
	}
	return rec, a, nil
}

// TestH1Answer_anySplit: an answer relays the same whatever parts it is
// written in: a 1xx before it skipped, hop-by-hop fields dropped, its body
// by length or in chunks with a trailer, or none for HEAD and 204.
func TestH1Answer_anySplit(t *testing.T) {
	cases := []struct {
		name, answer string
		head         bool
		status       int
		body         string
		length       string
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nConnection: keep-alive\r\n\r\nhello", false, 200, "hello", "5"},
		{"chunked", "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: t\r\n\r\n", false, 201, "hello!", ""},
		{"early hints", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok", false, 200, "ok", "2"},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n", true, 200, "", ""},
		{"no content", "HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false, 204, "", ""},
	}
	for _, c := range cases {
		for every := 1; every <= len(c.answer); every++ {
			rec, a, err := relay(c.answer, c.head, func(i int) bool { return i%every == 0 })
			require.NoError(t, err, "%s, parts of %d", c.name, every)
			require.Equal(t, respDone, a.state, "%s, parts of %d", c.name, every)
			require.Equal(t, c.status, rec.Code, c.name)
			require.Equal(t, c.body, rec.Body.String(), "%s, parts of %d", c.name, every)
			require.Equal(t, "1", rec.Header().Get("X-A"), c.name)
			require.Empty(t, rec.Header().Get("Connection"), c.name)
			require.Empty(t, rec.Header().Get("Transfer-Encoding"), c.name)
			require.Empty(t, rec.Header().Get("Link"), "%s: a 1xx's fields stay out", c.name)
			require.Equal(t, c.length, rec.Header().Get("Content-Length"), c.name)
		}
	}
}

// TestH1Answer_garbage: what does not parse fails without relaying a
// status; a head over the bound too.
func TestH1Answer_garbage(t *testing.T) {
	for _, answer := range []string{
		"NOT HTTP\r\n\r\n",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
		"HTTP/1.1 200 OK\r\nX: " + string(make([]byte, 5000)),
	} {
		rec, a, err := relay(answer, false, func(int) bool { return false })
		require.ErrorIs(t, err, errBadAnswer, "%q", answer)
		require.True(t, a.failed)
		if a.state == respHead {
			require.False(t, rec.Flushed)
			require.Equal(t, http.StatusOK, rec.Code, "no status relayed (the recorder's default)")
			require.Empty(t, rec.Body.String())
		}
	}
}

// FuzzH1Answer: no answer, however broken or split, panics the relay.
func FuzzH1Answer(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), uint8(3))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"), uint8(1))
	f.Add([]byte("HTTP/1.0 200 OK\r\n\r\nrest"), uint8(7))
	f.Fuzz(func(t *testing.T, answer []byte, every uint8) {
		n := int(every) + 1
		_, a, _ := relay(string(answer), false, func(i int) bool { return i%n == 0 })
		a.closed()
	})
}
