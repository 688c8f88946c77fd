// Package alerts is the alerting core of the controller: rules, the
// per-(rule, node) alert state machine, delivery planning (routing,
// grouping, silences, repeat intervals, idempotency keys), the Alertmanager
// payloads, and the HTTP senders.
//
// Everything except the senders is a pure, deterministic function of its
// inputs and the time it is given: the package never reads the clock, never
// writes to Raft and never starts goroutines. The leader feeds it and
// persists what it returns:
//
//	ts := ev.Evaluate(now, rules, inputs, current)  // leader loop, every few seconds
//	propose each Transition; the FSM calls Apply(current, t)
//	plan := d.Plan(now, current, silences, ledger)  // notifier loop
//	send each Notification; on success propose n.Delivery(); the FSM calls ledger.Record(d)
//
// A new leader starts from the replicated alert map and ledger, so it keeps
// active_since, does not fire an alert again and does not resend a
// notification that was recorded as delivered. Between a successful send
// and the Raft commit of its Delivery a failover can resend it; the resend
// carries the same Idempotency-Key header, so receivers can drop it.
package alerts
