package provider

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Headers of a webhook call.
const (
	// IdempotencyHeader and EventHeader carry the event id.
	IdempotencyHeader = "Idempotency-Key"
	EventHeader       = "X-Hostscale-Event"
	// SignatureHeader carries Sign(secret, body) when the provider has a
	// secret.
	SignatureHeader = "X-Hostscale-Signature"
	userAgent       = "hostscale"
)

// signaturePrefix names the algorithm in SignatureHeader.
const signaturePrefix = "sha256="

// bodyOptions is how a ScaleEvent is encoded; see the package comment.
var bodyOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// client sends webhook calls. Provider calls are rare (one per scaling
// decision), so connections are not kept: nothing idles between calls.
// Redirects are answers, not followed: following one would resend the
// decision somewhere the pool's owner did not name.
var client = &http.Client{
	Transport: func() *http.Transport {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.DisableKeepAlives = true
		return t
	}(),
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// callWebhook POSTs ev to w once and fills r.
func callWebhook(ctx context.Context, w *pb.WebhookProvider, ev *pb.ScaleEvent, r *pb.ProviderResult) {
	body, err := bodyOptions.Marshal(ev)
	if err != nil {
		r.Error = fmt.Sprintf("encode event: %v", err)
		return
	}
	d := timeout(w.GetTimeout(), DefaultWebhookTimeout, MaxWebhookTimeout)
	ctx, cancel := withTimeout(ctx, d)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.GetUrl(), bytes.NewReader(body))
	if err != nil {
		r.Error = fmt.Sprintf("request: %v", err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set(IdempotencyHeader, ev.GetId())
	req.Header.Set(EventHeader, ev.GetId())
	if w.GetSecret() != "" {
		req.Header.Set(SignatureHeader, Sign(w.GetSecret(), body))
	}
	resp, err := client.Do(req)
	if err != nil {
		if msg := ctxError(ctx, d); msg != "" {
			r.Error = fmt.Sprintf("POST %s: %s", req.URL.Redacted(), msg)
		} else {
			r.Error = err.Error()
		}
		return
	}
	defer resp.Body.Close()
	r.HttpStatus = int32(resp.StatusCode)
	// The status decides; a body cut short by the timeout is kept as read.
	ans, _ := io.ReadAll(io.LimitReader(resp.Body, MaxOutput+1))
	r.Output = clip(ans, false, len(ans) > MaxOutput)
	r.Ok = resp.StatusCode/100 == 2
	if !r.Ok {
		r.Error = "unexpected status " + resp.Status
	}
}

// Sign returns the SignatureHeader value for body: "sha256=" and the hex
// HMAC-SHA256 of body keyed with secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return signaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether header, a SignatureHeader value, is the signature
// of body with secret. body must be the raw request body, before any
// decoding. The comparison takes constant time. An empty secret verifies
// nothing: calls to providers without a secret are not signed.
func Verify(secret string, body []byte, header string) bool {
	if secret == "" {
		return false
	}
	hexSum, ok := strings.CutPrefix(strings.TrimSpace(header), signaturePrefix)
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}
