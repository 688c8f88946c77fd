// Package balancer is hostscale's data plane: an HTTP/1.1 reverse proxy that
// routes requests by Host and path prefix to pools of backends described by a
// versioned Table.
//
// It owns accepting client connections, picking a backend (least-request with
// power of two choices, or smooth weighted round robin), keep-alive connection
// pools per backend, passive health (ejection with back-off, capped per pool),
// retries within a budget, slow start, draining, X-Forwarded-* handling,
// streaming of bodies both ways, WebSocket tunnelling, holding requests for
// a pool that has no backend yet (a pool scaled to zero), and per-backend and
// per-pool statistics. It never needs a controller to keep serving: the table
// in force stays until a newer one is applied, and with a data directory it
// survives a restart.
//
// Tables are immutable snapshots swapped atomically; the request path never
// takes a lock that Apply holds. The package exposes plain Go types only:
// balancer/watch converts the controllers' wire messages into a Table.
package balancer
