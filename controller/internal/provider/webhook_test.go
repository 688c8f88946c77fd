package provider

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func webhookProvider(url, secret string, timeout time.Duration) *pb.ScaleProvider {
	w := &pb.WebhookProvider{Url: url, Secret: secret}
	if timeout > 0 {
		w.Timeout = durationpb.New(timeout)
	}
	return &pb.ScaleProvider{Provider: &pb.ScaleProvider_Webhook{Webhook: w}}
}

// fullEvent has every kind of field set, for round trips.
var fullEvent = &pb.ScaleEvent{
	Id: "web-7", Pool: "web", Time: timestamppb.New(time.Unix(1700000000, 5)),
	Metric:   pb.ScalingMetric(1),
	Observed: map[string]float64{"web-1": 0.75, "web-2": 0.5}, ObservedValue: 0.625, Target: 0.5,
	Current: 2, Ready: 2, RawDesired: 3, Recommendation: 3, Desired: 3, LimitedBy: "rate",
	Reason: "cpu 62.5% > 50%", Acted: true, Term: 1 << 40, PreviousDesired: 2,
}

// received is what a test server saw.
type received struct {
	method string
	header http.Header
	body   []byte
}

// recorder serves every request with status and answer, and hands what it
// received to the test.
func recorder(t *testing.T, status int, answer string) (*httptest.Server, <-chan received) {
	t.Helper()
	got := make(chan received, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- received{r.Method, r.Header.Clone(), b}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func TestCallWebhook_postsTheSignedEvent(t *testing.T) {
	srv, got := recorder(t, http.StatusAccepted, "scaling")
	now := time.Unix(1700000100, 0).UTC()
	r := Call(t.Context(), webhookProvider(srv.URL, "s3cret", 0), fullEvent, now)
	require.Empty(t, r.Error)
	require.True(t, r.Ok)
	require.Equal(t, KindWebhook, r.Kind)
	require.Equal(t, int32(http.StatusAccepted), r.HttpStatus)
	require.Equal(t, "scaling", r.Output)
	require.Equal(t, now, r.Time.AsTime())

	req := <-got
	require.Equal(t, http.MethodPost, req.method)
	require.Equal(t, "application/json", req.header.Get("Content-Type"))
	require.Equal(t, "hostscale", req.header.Get("User-Agent"))
	require.Equal(t, "web-7", req.header.Get("Idempotency-Key"))
	require.Equal(t, "web-7", req.header.Get("X-Hostscale-Event"))

	var back pb.ScaleEvent
	require.NoError(t, protojson.Unmarshal(req.body, &back))
	require.True(t, proto.Equal(fullEvent, &back), "sent %s", req.body)
	require.Contains(t, string(req.body), `"previous_desired"`, "proto names, not JSON names")

	sig := req.header.Get("X-Hostscale-Signature")
	require.True(t, strings.HasPrefix(sig, "sha256="), sig)
	require.True(t, Verify("s3cret", req.body, sig))
	require.False(t, Verify("other", req.body, sig))
	require.False(t, Verify("s3cret", append(req.body, ' '), sig))
}

func TestCallWebhook_zeroFieldsArePresentAndNoSecretMeansNoSignature(t *testing.T) {
	srv, got := recorder(t, http.StatusOK, "")
	ev := &pb.ScaleEvent{Id: "web-8", Pool: "web", PreviousDesired: 1, Desired: 0, Acted: true}
	r := Call(t.Context(), webhookProvider(srv.URL, "", 0), ev, time.Now())
	require.True(t, r.Ok, r.Error)
	req := <-got
	require.Empty(t, req.header.Values("X-Hostscale-Signature"))
	require.Contains(t, string(req.body), `"desired":0`)
}

func TestCallWebhook_serverErrorKeepsStatusAndBody(t *testing.T) {
	srv, _ := recorder(t, http.StatusInternalServerError, "database is down")
	r := Call(t.Context(), webhookProvider(srv.URL, "s", 0), fullEvent, time.Now())
	require.False(t, r.Ok)
	require.Equal(t, int32(500), r.HttpStatus)
	require.Equal(t, "database is down", r.Output)
	require.Equal(t, "unexpected status 500 Internal Server Error", r.Error)
}

func TestCallWebhook_answerBoundedTo4KiB(t *testing.T) {
	srv, _ := recorder(t, http.StatusOK, "START"+strings.Repeat("x", 3*MaxOutput))
	r := Call(t.Context(), webhookProvider(srv.URL, "", 0), fullEvent, time.Now())
	require.True(t, r.Ok, r.Error)
	require.Len(t, r.Output, MaxOutput)
	require.True(t, strings.HasPrefix(r.Output, "STARTx"))
	require.True(t, strings.HasSuffix(r.Output, "x…"))
}

func TestCallWebhook_redirectIsNotFollowed(t *testing.T) {
	target, got := recorder(t, http.StatusOK, "")
	srv := httptest.NewServer(http.RedirectHandler(target.URL, http.StatusTemporaryRedirect))
	t.Cleanup(srv.Close)
	r := Call(t.Context(), webhookProvider(srv.URL, "", 0), fullEvent, time.Now())
	require.False(t, r.Ok)
	require.Equal(t, int32(http.StatusTemporaryRedirect), r.HttpStatus)
	require.Len(t, got, 0)
}

func TestCallWebhook_connectionRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	r := Call(t.Context(), webhookProvider("http://"+addr+"/scale", "", 0), fullEvent, time.Now())
	require.False(t, r.Ok)
	require.Zero(t, r.HttpStatus)
	require.Contains(t, r.Error, "connection refused")
}

func TestCallWebhook_hangingServerHitsTheTimeout(t *testing.T) {
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // so the server notices the client leaving
		arrived <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first
	start := time.Now()
	r := Call(t.Context(), webhookProvider(srv.URL, "", 200*time.Millisecond), fullEvent, start)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Len(t, arrived, 1)
	require.False(t, r.Ok)
	require.Zero(t, r.HttpStatus)
	require.Equal(t, "POST "+srv.URL+": timed out after 200ms", r.Error)
}

func TestCallWebhook_badURL(t *testing.T) {
	for _, u := range []string{"", "ftp://example.com/x", "http://[::1"} {
		r := Call(t.Context(), webhookProvider(u, "", 0), fullEvent, time.Now())
		require.False(t, r.Ok, u)
		require.Zero(t, r.HttpStatus)
		require.NotEmpty(t, r.Error, u)
	}
}

func TestVerify(t *testing.T) {
	body := []byte(`{"id":"web-1"}`)
	good := Sign("k", body)
	for _, tc := range []struct {
		name, secret, header string
		want                 bool
	}{
		{"good", "k", good, true},
		{"surrounding space", "k", " " + good + " ", true},
		{"other secret", "other", good, false},
		{"empty secret", "", Sign("", body), false},
		{"no prefix", "k", strings.TrimPrefix(good, "sha256="), false},
		{"other algorithm", "k", "sha1=" + strings.TrimPrefix(good, "sha256="), false},
		{"not hex", "k", "sha256=zz", false},
		{"short", "k", good[:len(good)-2], false},
		{"empty", "k", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Verify(tc.secret, body, tc.header))
		})
	}
}

func FuzzVerify(f *testing.F) {
	f.Add("k", []byte(`{}`), "sha256=00")
	f.Add("", []byte(nil), "")
	f.Fuzz(func(t *testing.T, secret string, body []byte, header string) {
		_ = Verify(secret, body, header)
		if secret != "" && !Verify(secret, body, Sign(secret, body)) {
			t.Fatal("own signature does not verify")
		}
	})
}
