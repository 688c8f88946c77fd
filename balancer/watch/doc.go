// Package watch keeps a balancer's table in step with the controller
// cluster.
//
// A Watcher holds one BalancerService.WatchTable stream to one controller at
// a time: any controller serves it from its own replicated state, leader or
// follower. It asks only for tables newer than the one in force, converts
// each table it receives into a balancer.Table, applies it, and acknowledges
// the applied version (or the reason a table was refused) with AckTable.
// While the stream is open it also sends the balancer's cumulative
// per-backend and per-pool counters with ReportStats, for the controllers'
// autoscaler: every StatsInterval, and at once when a request starts
// waiting for a backend of a pool scaled to zero. When the stream fails it
// moves on to the next controller in its list after a jittered exponential
// back-off.
//
// It never takes a table away: while no controller answers, the table in
// force stays in force, and with a data directory it survives a restart of
// the balancer. It never applies a table older than the one in force
// (balancer.Balancer.Apply refuses it). It does not write to the cluster
// beyond acknowledgements and stats reports.
package watch
