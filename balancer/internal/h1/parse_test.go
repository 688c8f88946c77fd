package h1

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func parseReq(t testing.TB, s string) (*Request, error) {
	var r Request
	n := HeadEnd([]byte(s), 0)
	if n < 0 {
		return nil, ErrMalformed
	}
	return &r, ParseRequest([]byte(s[:n]), &r, MaxHeaders)
}

func TestParseRequest_fields(t *testing.T) {
	r, err := parseReq(t, "POST /a?b=1 HTTP/1.1\r\nHost: Example.com\r\nContent-Length: 5, 5\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: keep-alive, X-Hop\r\nExpect: 100-continue\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, "POST", string(r.Method))
	require.Equal(t, "/a?b=1", string(r.Target))
	require.Equal(t, "Example.com", string(r.Host))
	require.Equal(t, 1, r.Minor)
	require.EqualValues(t, 5, r.ContentLength)
	require.True(t, r.KeepAlive)
	require.True(t, r.ExpectContinue)
	require.True(t, r.ConnTokens)
	require.True(t, ConnectionNames(r.Headers, []byte("x-hop")))
	require.False(t, ConnectionNames(r.Headers, []byte("x-other")))
	require.Equal(t, KindXForwardedFor, r.Headers[2].Kind)

	r, err = parseReq(t, "GET http://example.com:8080/p?q HTTP/1.0\r\n\r\n")
	require.NoError(t, err)
	require.Equal(t, "/p?q", string(r.Target))
	require.Equal(t, "example.com:8080", string(r.Host))
	require.False(t, r.KeepAlive)
	require.EqualValues(t, -1, r.ContentLength)

	r, err = parseReq(t, "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
	require.NoError(t, err)
	require.True(t, r.Upgrade)

	r, err = parseReq(t, "OPTIONS * HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n")
	require.NoError(t, err)
	require.True(t, r.Chunked)
	require.False(t, r.KeepAlive)
}

func TestParseRequest_rejects(t *testing.T) {
	for name, tc := range map[string]struct {
		raw  string
		want error
	}{
		"CL+TE":            {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", ErrConflictingLength},
		"two CL":           {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ErrConflictingLength},
		"CL plus sign":     {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n", ErrMalformed},
		"CL overflow":      {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", ErrMalformed},
		"TE twice":         {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", ErrUnsupportedTransferEncoding},
		"TE identity":      {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", ErrUnsupportedTransferEncoding},
		"no host":          {"GET / HTTP/1.1\r\n\r\n", ErrHost},
		"HTTP/1.2":         {"GET / HTTP/1.2\r\nHost: x\r\n\r\n", ErrVersion},
		"HTTP/2.0":         {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", ErrVersion},
		"lowercase proto":  {"GET / http/1.1\r\nHost: x\r\n\r\n", ErrMalformed},
		"bad method":       {"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", ErrMalformed},
		"empty target":     {"GET  HTTP/1.1\r\nHost: x\r\n\r\n", ErrMalformed},
		"star not OPTIONS": {"GET * HTTP/1.1\r\nHost: x\r\n\r\n", ErrMalformed},
		"userinfo":         {"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n", ErrMalformed},
		"CR in value":      {"GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", ErrMalformed},
		"empty name":       {"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", ErrMalformed},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseReq(t, tc.raw)
			require.ErrorIs(t, err, tc.want)
		})
	}
	var r Request
	var b strings.Builder
	b.WriteString("GET / HTTP/1.1\r\nHost: x\r\n")
	for i := 0; i < MaxHeaders; i++ {
		b.WriteString("A: b\r\n")
	}
	b.WriteString("\r\n")
	require.ErrorIs(t, ParseRequest([]byte(b.String()), &r, MaxHeaders), ErrTooManyHeaders)
}

func TestParseResponse(t *testing.T) {
	var r Response
	require.NoError(t, ParseResponse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), &r, MaxHeaders))
	require.Equal(t, 200, r.Status)
	require.Equal(t, "OK", string(r.Reason))
	require.EqualValues(t, 3, r.ContentLength)
	require.True(t, r.KeepAlive)

	require.NoError(t, ParseResponse([]byte("HTTP/1.1 204\r\n\r\n"), &r, MaxHeaders))
	require.Equal(t, 204, r.Status)

	// TE overrides CL and forbids reuse.
	require.NoError(t, ParseResponse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"), &r, MaxHeaders))
	require.True(t, r.Chunked)
	require.EqualValues(t, -1, r.ContentLength)
	require.False(t, r.KeepAlive)

	require.NoError(t, ParseResponse([]byte("HTTP/1.0 200 OK\r\n\r\n"), &r, MaxHeaders))
	require.False(t, r.KeepAlive)

	require.ErrorIs(t, ParseResponse([]byte("HTTP/1.1 2000 OK\r\n\r\n"), &r, MaxHeaders), ErrMalformed)
	require.ErrorIs(t, ParseResponse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), &r, MaxHeaders), ErrConflictingLength)
	require.ErrorIs(t, ParseResponse([]byte("ICY 200 OK\r\n\r\n"), &r, MaxHeaders), ErrMalformed)
}

func TestParseChunkSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "a": 10, "FF": 255, "10;ext=1": 16, "1 ": 1, "7fffffffffffffff"[1:]: 0x0fffffffffffffff} {
		got, err := ParseChunkSize([]byte(in))
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "g", "-1", "0x10", "1000000000000000", ";x"} {
		_, err := ParseChunkSize([]byte(in))
		require.Error(t, err, in)
	}
}

func TestReader_headAcrossReadsAndLeadingCRLF(t *testing.T) {
	src := io.MultiReader(strings.NewReader("\r\nGET / HTTP/1.1\r\nHo"), strings.NewReader("st: x\r\n\r\nBODY"))
	rd := NewReader(src)
	defer rd.Release()
	var head []byte
	for {
		if h, ok := rd.Head(); ok {
			head = h
			break
		}
		_, err := rd.Fill(1024)
		require.NoError(t, err)
	}
	require.Equal(t, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", string(head))
	rd.Discard(len(head))
	rest, _ := io.ReadAll(rd)
	require.Equal(t, "BODY", string(rest))
}

func TestReader_growsToLimitThenRefuses(t *testing.T) {
	big := "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 10000) + "\r\n\r\n"
	rd := NewReader(strings.NewReader(big))
	var err error
	for err == nil {
		if _, ok := rd.Head(); ok {
			break
		}
		_, err = rd.Fill(20000)
	}
	require.NoError(t, err)
	h, ok := rd.Head()
	require.True(t, ok)
	require.Equal(t, big, string(h))

	rd = NewReader(strings.NewReader(big))
	for err == nil {
		_, err = rd.Fill(5000)
	}
	require.ErrorIs(t, err, ErrHeadTooLarge)
}

func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"GET http://a/b HTTP/1.0\r\nConnection: keep-alive, x\r\nX: y\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		n := HeadEnd(b, 0)
		if n < 0 {
			return
		}
		head := b[:n]
		err := ParseRequest(head, &r, 16)
		if err != nil {
			return
		}
		if r.Chunked && r.ContentLength >= 0 {
			t.Fatal("both chunked and Content-Length")
		}
		if r.ContentLength < -1 {
			t.Fatal("negative length")
		}
		if len(r.Method) == 0 || len(r.Target) == 0 {
			t.Fatal("empty method or target")
		}
		for _, h := range r.Headers {
			if bytes.ContainsAny(h.Value, "\r\n") || bytes.ContainsAny(h.Name, "\r\n: ") {
				t.Fatalf("header smuggles a line break: %q", h)
			}
		}
	})
}

func FuzzParseResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Response
		n := HeadEnd(b, 0)
		if n < 0 {
			return
		}
		if ParseResponse(b[:n], &r, 16) == nil && (r.Status < 100 || r.Status > 999) {
			t.Fatalf("status %d", r.Status)
		}
	})
}

func FuzzChunkedBody(f *testing.F) {
	f.Add([]byte("3\r\nabc\r\n0\r\n\r\n"))
	f.Add([]byte("1;x=y\r\na\r\n0\r\nT: v\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := NewReader(bytes.NewReader(b))
		defer rd.Release()
		for i := 0; i < 100; i++ {
			line, err := rd.ReadLine(64)
			if err != nil {
				return
			}
			n, err := ParseChunkSize(line)
			if err != nil {
				return
			}
			if n < 0 {
				t.Fatal("negative chunk size")
			}
			if n == 0 {
				return
			}
			if _, err := io.CopyN(io.Discard, rd, n); err != nil {
				return
			}
			if _, err := rd.ReadLine(64); err != nil {
				return
			}
		}
	})
}

func BenchmarkParseRequest(b *testing.B) {
	raw := []byte("GET /api/v1/items?page=2 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nCookie: session=abcdef0123456789\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n")
	var r Request
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		n := HeadEnd(raw, 0)
		if err := ParseRequest(raw[:n], &r, MaxHeaders); err != nil {
			b.Fatal(err)
		}
	}
}
