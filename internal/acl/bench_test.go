package acl

import (
	"context"
	"testing"

	"google.golang.org/grpc/metadata"
)

// BenchmarkAuthorize is the cost ACLs add to every call: the metadata
// read, the digest of the secret and the rule.
func BenchmarkAuthorize(b *testing.B) {
	f, err := OpenFile(testACL(b))
	if err != nil {
		b.Fatal(err)
	}
	a := &Authorizer{Lookup: f.Lookup, Rules: Rules{"/hostscale.v1.PoolService/CreatePool": Write}}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(MetadataKey, "Bearer "+opsSecret))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Authorize(ctx, "/hostscale.v1.PoolService/CreatePool"); err != nil {
			b.Fatal(err)
		}
	}
}
