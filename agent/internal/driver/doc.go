// Package driver runs the backend instances the controller assigns to this
// agent as local processes, and reports what became of them.
//
// It owns the instances' whole local life: picking a port on the advertise
// address, starting each process in its own process group with its
// environment and working directory, health checking it (STARTING,
// HEALTHY, UNHEALTHY), restarting it with exponential back-off when it
// exits, stopping what is no longer assigned (stop signal, grace,
// SIGKILL), bounding its stdout and stderr logs, measuring its CPU and
// resident memory (Usage), and keeping DataDir/instances/state.json so
// that a restarted agent adopts the processes it left running instead of
// starting them twice.
//
// Assignment sets are fenced by their (term, index) stamp: a set older than
// the newest applied one is ignored, so a deposed leader cannot undo a newer
// leader's decision, even across an agent restart. Until the first set
// after a start is applied, the driver neither starts nor stops anything:
// losing every controller never stops a running instance.
//
// It never decides which instances should run, never talks to a controller
// and never stops instances merely because the agent exits: they outlive
// Run unless StopAll is called.
package driver
