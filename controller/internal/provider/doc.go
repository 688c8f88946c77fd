// Package provider calls a pool's scale provider for one autoscaling
// decision: it runs the pool's command, or POSTs the decision to the pool's
// webhook, once, and describes what happened in a pb.ProviderResult.
//
// The package never retries, never writes to Raft and never reads the
// clock for what it records: the leader's provider loop calls Call, waits
// Backoff(n) between attempts up to MaxAttempts, fills in the result's
// attempts and done, and proposes it. Call returns when the attempt ends,
// its timeout passes or ctx is cancelled; it leaves no process or goroutine
// of its own behind.
//
// # Exec providers
//
// The command runs in its own process group with the controller's
// environment plus
//
//	HOSTSCALE_POOL      the pool's name
//	HOSTSCALE_DESIRED   the new desired count (ScaleEvent.desired)
//	HOSTSCALE_CURRENT   the desired count before it (ScaleEvent.previous_desired)
//	HOSTSCALE_EVENT_ID  the event id, "<pool>-<n>": the same on every attempt
//
// an empty stdin and the controller's working directory. At its timeout, or
// when ctx is cancelled, the whole group is killed with SIGKILL, so children
// the command started go with it (unless they left the group, as daemons
// do with setsid). Exit status 0 is success. Stdout and stderr are kept
// together, the last MaxOutput bytes of them.
//
// # Webhook providers
//
// The request is
//
//	POST <url>
//	Content-Type: application/json
//	User-Agent: hostscale
//	Idempotency-Key: <event id>
//	X-Hostscale-Event: <event id>
//	X-Hostscale-Signature: sha256=<hex HMAC-SHA256(secret, body)>   (only with a secret)
//
//	<the ScaleEvent in protojson: field names as in the .proto (snake_case),
//	 every field present even when zero (so "desired": 0 is there when
//	 scaling to zero), 64-bit integers such as "term" as strings,
//	 timestamps in RFC 3339>
//
// Every attempt for an event sends the same Idempotency-Key, so a receiver
// can drop a repeat (a retry after a lost answer, or a new leader redoing
// the call). Receivers check the signature over the raw body bytes with
// Verify before decoding them. A 2xx answer is success; redirects are not
// followed (a 3xx is a failure with its status). The first MaxOutput bytes
// of the answer's body are kept.
//
// Outputs and bodies are made valid UTF-8 (invalid bytes become U+FFFD)
// so the result can always be marshalled into a Raft command.
package provider
