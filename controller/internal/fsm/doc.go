// Package fsm is the controller's replicated state machine: it decodes each
// committed Raft command, applies it to the State, remembers the outcome of
// every request id so that a retried request is applied once, and snapshots
// and restores the whole State as one protobuf message.
//
// Apply is deterministic: it reads no clock, no randomness and no local
// configuration; the leader puts the time into each command. A command it
// cannot decode stops the process, since silently skipping it would let the
// replicas diverge.
package fsm
