// Package session keeps an agent's one stream to the controller leader:
// Hello and Welcome, following Redirects, sending samples in batches and
// heartbeats, forgetting samples once acknowledged, and reconnecting with
// jittered exponential back-off across the controllers it knows.
//
// Samples are handed to a Session with Offer, whether or not a stream is
// up; the Session keeps a bounded buffer of those not yet acknowledged
// (oldest dropped first) and sends them in order. It never takes samples
// itself and never decides anything about the fleet.
package session
