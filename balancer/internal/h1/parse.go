// Package h1 parses HTTP/1.x message heads for the balancer's proxy path.
//
// It owns the wire syntax only: request and status lines, header fields, message
// framing (Content-Length, chunked) and the hop-by-hop classification of header
// names. It never allocates on the success path: parsed fields alias the caller's
// buffer and stay valid only while that buffer is unchanged. It never does I/O
// policy (timeouts, routing, retries); that belongs to the proxy.
//
// The parser is strict where leniency enables request smuggling: a request with
// both Content-Length and Transfer-Encoding, with differing Content-Length values,
// with a Transfer-Encoding other than "chunked", with whitespace before a header
// colon, with obsolete line folding or with bare CR/LF is rejected.
package h1

import (
	"bytes"
	"errors"
)

// Errors returned by the parsers. Callers branch on them to choose a status code.
var (
	// ErrMalformed is a syntax error in the message head (400).
	ErrMalformed = errors.New("h1: malformed message")
	// ErrConflictingLength is a message with Content-Length and Transfer-Encoding,
	// or with differing Content-Length values (400).
	ErrConflictingLength = errors.New("h1: conflicting message length")
	// ErrUnsupportedTransferEncoding is a Transfer-Encoding other than chunked (501).
	ErrUnsupportedTransferEncoding = errors.New("h1: unsupported transfer-encoding")
	// ErrVersion is an HTTP version other than 1.0 or 1.1 (505).
	ErrVersion = errors.New("h1: unsupported HTTP version")
	// ErrTooManyHeaders is a head with more header fields than allowed (431).
	ErrTooManyHeaders = errors.New("h1: too many header fields")
	// ErrHost is a HTTP/1.1 request without exactly one Host (400).
	ErrHost = errors.New("h1: missing or repeated Host")
)

// Kind classifies a header field by name so the proxy can rewrite a head with a
// single switch instead of repeated case-insensitive comparisons.
type Kind uint8

// Header kinds. KindOther is forwarded unchanged (unless named by Connection).
const (
	KindOther Kind = iota
	KindHopByHop
	KindConnection
	KindContentLength
	KindTransferEncoding
	KindUpgrade
	KindHost
	KindXForwardedFor
	KindXForwardedProto
	KindXForwardedHost
	KindExpect
)

// Header is one header field. Name and Value alias the parsed buffer; Value has
// its surrounding whitespace trimmed.
type Header struct {
	Name  []byte
	Value []byte
	Kind  Kind
}

// MaxHeaders is the default limit on header fields per message.
const MaxHeaders = 128

// Request is a parsed request head. The zero value is ready for ParseRequest; the
// Headers slice is reused across calls to avoid allocation.
type Request struct {
	Method []byte
	// Target is the request target in origin form ("/path?query"), "*" for
	// OPTIONS, or the path of an absolute-form target.
	Target []byte
	// Minor is the HTTP minor version: 0 or 1.
	Minor int
	// Host is the Host header value, or the authority of an absolute-form target.
	Host    []byte
	Headers []Header
	// ContentLength is the body length, or -1 when the request has no
	// Content-Length (a request without one and not chunked has no body).
	ContentLength int64
	Chunked       bool
	// KeepAlive reports whether the connection persists after this exchange.
	KeepAlive bool
	// Upgrade reports a Connection: upgrade request with an Upgrade header.
	Upgrade        bool
	ExpectContinue bool
	// ConnTokens reports that Connection names header fields other than
	// close, keep-alive and upgrade: those fields are hop-by-hop too.
	ConnTokens bool
}

// Response is a parsed response head, reused like Request.
type Response struct {
	Minor         int
	Status        int
	Reason        []byte
	Headers       []Header
	ContentLength int64
	Chunked       bool
	KeepAlive     bool
	ConnTokens    bool
}

// HasBody reports whether the request carries a body.
func (r *Request) HasBody() bool { return r.Chunked || r.ContentLength > 0 }

// HeadEnd returns the length of the message head at the start of b, including
// its terminating empty line, or -1 if b does not yet hold a complete head.
// from is a position up to which b was already searched (0 on the first call).
func HeadEnd(b []byte, from int) int {
	if from > 3 {
		from -= 3
	} else {
		from = 0
	}
	i := bytes.Index(b[from:], crlfcrlf)
	if i < 0 {
		return -1
	}
	return from + i + 4
}

var crlfcrlf = []byte("\r\n\r\n")

// ParseRequest parses the request head in b, which must end with the empty line
// (see HeadEnd). Fields of req alias b.
func ParseRequest(b []byte, req *Request, maxHeaders int) error {
	hdrs := req.Headers[:0]
	*req = Request{Headers: hdrs, ContentLength: -1}
	line, rest, ok := cutLine(b)
	if !ok {
		return ErrMalformed
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return ErrMalformed
	}
	req.Method = line[:sp1]
	if !isToken(req.Method) {
		return ErrMalformed
	}
	line = line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 <= 0 {
		return ErrMalformed
	}
	target := line[:sp2]
	minor, err := parseVersion(line[sp2+1:])
	if err != nil {
		return err
	}
	req.Minor = minor
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return ErrMalformed
		}
	}
	var absHost []byte
	switch {
	case target[0] == '/':
	case len(target) == 1 && target[0] == '*':
		if string(req.Method) != "OPTIONS" {
			return ErrMalformed
		}
	default:
		// Absolute form: scheme "://" authority path.
		i := bytes.Index(target, []byte("://"))
		if i <= 0 {
			return ErrMalformed
		}
		auth := target[i+3:]
		j := bytes.IndexByte(auth, '/')
		if j < 0 {
			absHost, target = auth, slash
		} else {
			absHost, target = auth[:j], auth[j:]
		}
		if len(absHost) == 0 || bytes.IndexByte(absHost, '@') >= 0 {
			return ErrMalformed
		}
	}
	req.Target = target

	var fl flags
	hdrs, err = parseHeaders(rest, hdrs, maxHeaders, &fl, true)
	req.Headers = hdrs
	if err != nil {
		return err
	}
	if fl.hosts > 1 || (fl.hosts == 0 && minor == 1 && absHost == nil) {
		return ErrHost
	}
	req.Host = fl.host
	if absHost != nil {
		req.Host = absHost
	}
	if fl.te {
		if minor == 0 {
			return ErrMalformed
		}
		if fl.cl >= 0 || fl.clSeen {
			return ErrConflictingLength
		}
		req.Chunked = true
	}
	req.ContentLength = fl.cl
	req.KeepAlive = minor == 1 && !fl.close || minor == 0 && fl.keepAlive && !fl.close
	req.Upgrade = fl.upgrade && fl.upgradeHdr
	req.ExpectContinue = fl.expect100
	req.ConnTokens = fl.connTokens
	return nil
}

// ParseResponse parses the response head in b, which must end with the empty
// line. Fields of resp alias b.
func ParseResponse(b []byte, resp *Response, maxHeaders int) error {
	hdrs := resp.Headers[:0]
	*resp = Response{Headers: hdrs, ContentLength: -1}
	line, rest, ok := cutLine(b)
	if !ok || len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return ErrMalformed
	}
	switch line[7] {
	case '0':
	case '1':
		resp.Minor = 1
	default:
		return ErrVersion
	}
	if line[8] != ' ' {
		return ErrMalformed
	}
	st := line[9:12]
	if st[0] < '1' || st[0] > '9' || st[1] < '0' || st[1] > '9' || st[2] < '0' || st[2] > '9' {
		return ErrMalformed
	}
	resp.Status = int(st[0]-'0')*100 + int(st[1]-'0')*10 + int(st[2]-'0')
	if len(line) > 12 {
		if line[12] != ' ' {
			return ErrMalformed
		}
		resp.Reason = line[13:]
	}
	var fl flags
	hdrs, err := parseHeaders(rest, hdrs, maxHeaders, &fl, false)
	resp.Headers = hdrs
	if err != nil {
		return err
	}
	if fl.te {
		// RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and the
		// connection must not be reused after such a message.
		resp.Chunked = true
		if fl.cl >= 0 || fl.clSeen {
			fl.close = true
		}
		fl.cl = -1
	}
	resp.ContentLength = fl.cl
	resp.KeepAlive = resp.Minor == 1 && !fl.close || resp.Minor == 0 && fl.keepAlive && !fl.close
	resp.ConnTokens = fl.connTokens
	return nil
}

var slash = []byte("/")

type flags struct {
	cl         int64
	clSeen     bool
	te         bool
	hosts      int
	host       []byte
	close      bool
	keepAlive  bool
	upgrade    bool
	upgradeHdr bool
	expect100  bool
	connTokens bool
}

func parseHeaders(b []byte, hdrs []Header, max int, fl *flags, isReq bool) ([]Header, error) {
	fl.cl = -1
	for {
		line, rest, ok := cutLine(b)
		if !ok {
			return hdrs, ErrMalformed
		}
		b = rest
		if len(line) == 0 {
			if len(b) != 0 {
				return hdrs, ErrMalformed
			}
			return hdrs, nil
		}
		if len(hdrs) >= max {
			return hdrs, ErrTooManyHeaders
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return hdrs, ErrMalformed
		}
		name := line[:colon]
		if !isToken(name) {
			// Also rejects whitespace before the colon and obs-fold lines.
			return hdrs, ErrMalformed
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return hdrs, ErrMalformed
			}
		}
		k := classify(name)
		switch k {
		case KindContentLength:
			n, err := parseContentLength(value)
			if err != nil {
				return hdrs, err
			}
			if fl.cl >= 0 && fl.cl != n {
				return hdrs, ErrConflictingLength
			}
			fl.cl, fl.clSeen = n, true
		case KindTransferEncoding:
			if fl.te || !equalFold(value, "chunked") {
				return hdrs, ErrUnsupportedTransferEncoding
			}
			fl.te = true
		case KindHost:
			fl.hosts++
			fl.host = value
		case KindConnection:
			scanConnection(value, fl)
		case KindUpgrade:
			fl.upgradeHdr = len(value) > 0
		case KindExpect:
			if isReq && equalFold(value, "100-continue") {
				fl.expect100 = true
			}
		}
		hdrs = append(hdrs, Header{Name: name, Value: value, Kind: k})
	}
}

func scanConnection(v []byte, fl *flags) {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok, v = trimOWS(v), nil
		}
		switch {
		case len(tok) == 0:
		case equalFold(tok, "close"):
			fl.close = true
		case equalFold(tok, "keep-alive"):
			fl.keepAlive = true
		case equalFold(tok, "upgrade"):
			fl.upgrade = true
		default:
			fl.connTokens = true
		}
	}
}

// ConnectionNames reports whether name is listed as a token of any Connection
// header in hdrs (such a field is hop-by-hop, RFC 9110 §7.6.1).
func ConnectionNames(hdrs []Header, name []byte) bool {
	for i := range hdrs {
		if hdrs[i].Kind != KindConnection {
			continue
		}
		v := hdrs[i].Value
		for len(v) > 0 {
			var tok []byte
			if j := bytes.IndexByte(v, ','); j >= 0 {
				tok, v = trimOWS(v[:j]), v[j+1:]
			} else {
				tok, v = trimOWS(v), nil
			}
			if bytes.EqualFold(tok, name) {
				return true
			}
		}
	}
	return false
}

func parseContentLength(v []byte) (int64, error) {
	// A list of identical values ("5, 5") is accepted as one (RFC 9110 §8.6).
	var n int64 = -1
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok, v = trimOWS(v), nil
		}
		m, ok := parseUint(tok)
		if !ok {
			return 0, ErrMalformed
		}
		if n >= 0 && m != n {
			return 0, ErrConflictingLength
		}
		n = m
	}
	if n < 0 {
		return 0, ErrMalformed
	}
	return n, nil
}

func parseUint(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// ParseChunkSize parses a chunk-size line without its CRLF: hex digits,
// optionally followed by chunk extensions (";name=value"), which are ignored.
func ParseChunkSize(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		for _, c := range line[i:] {
			if c < ' ' && c != '\t' || c == 0x7f {
				return 0, ErrMalformed
			}
		}
		line = line[:i]
	}
	line = trimRightOWS(line)
	if len(line) == 0 || len(line) > 15 {
		return 0, ErrMalformed
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, ErrMalformed
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

func parseVersion(v []byte) (int, error) {
	if len(v) != 8 || string(v[:7]) != "HTTP/1." {
		if len(v) == 8 && string(v[:5]) == "HTTP/" {
			return 0, ErrVersion
		}
		return 0, ErrMalformed
	}
	switch v[7] {
	case '0':
		return 0, nil
	case '1':
		return 1, nil
	}
	return 0, ErrVersion
}

// cutLine splits b at the first CRLF. A bare CR or LF inside the line is an error
// (reported as !ok).
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return trimRightOWS(b)
}

func trimRightOWS(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// tokenTable marks tchar (RFC 9110 §5.6.2).
var tokenTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenTable[c] {
			return false
		}
	}
	return true
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func classify(name []byte) Kind {
	switch len(name) {
	case 2:
		if equalFold(name, "te") {
			return KindHopByHop
		}
	case 4:
		if equalFold(name, "host") {
			return KindHost
		}
	case 6:
		if equalFold(name, "expect") {
			return KindExpect
		}
	case 7:
		if equalFold(name, "upgrade") {
			return KindUpgrade
		}
		if equalFold(name, "trailer") {
			return KindHopByHop
		}
	case 10:
		if equalFold(name, "connection") {
			return KindConnection
		}
		if equalFold(name, "keep-alive") {
			return KindHopByHop
		}
	case 14:
		if equalFold(name, "content-length") {
			return KindContentLength
		}
	case 15:
		if equalFold(name, "x-forwarded-for") {
			return KindXForwardedFor
		}
	case 16:
		if equalFold(name, "proxy-connection") {
			return KindHopByHop
		}
		if equalFold(name, "x-forwarded-host") {
			return KindXForwardedHost
		}
	case 17:
		if equalFold(name, "transfer-encoding") {
			return KindTransferEncoding
		}
		if equalFold(name, "x-forwarded-proto") {
			return KindXForwardedProto
		}
	case 18:
		if equalFold(name, "proxy-authenticate") {
			return KindHopByHop
		}
	case 19:
		if equalFold(name, "proxy-authorization") {
			return KindHopByHop
		}
	}
	return KindOther
}

// IsIdempotent reports whether method is idempotent (RFC 9110 §9.2.2), which
// makes a request safe to send again after a failure.
func IsIdempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
