// Package agent composes an agent process's host-side loops: it samples
// the host every interval (with the CPU and memory of the instances the
// driver runs, when given their source), publishes the latest sample as
// Prometheus gauges, and hands every sample to the session that streams
// them to the controller leader. Losing every controller never stops
// sampling.
package agent
