// Package endpoint holds the controller's gRPC handlers. Each handler
// validates its request (errors name the field), then either reads the
// local state, or goes through Core, the one place that forwards a call to
// the leader and applies commands through Raft.
package endpoint
