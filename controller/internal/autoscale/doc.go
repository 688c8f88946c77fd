// Package autoscale is the autoscaler's decision: given a pool's scaling
// policy, its bounds, its desired count, the metric of its ready instances
// and the pool's recent scale events, it says how many instances the pool
// should have and why. It also owns the policy's defaults and validation.
//
// The decision follows the Kubernetes Horizontal Pod Autoscaler (HPA):
//
//	raw      = ceil(ready × observed / target)
//	tolerance: |observed/target − 1| ≤ tolerance keeps the pool's desired
//	holds    : no data; stale data for a scale-down; a leader still warming up
//	window   : the lowest recommendation of the scale-up window, the highest
//	           of the scale-down window (stabilizeRecommendationWithBehaviors)
//	rate     : the scale-up or scale-down limits, counting the changes
//	           already made in each limit's period (convertDesiredReplicasWithBehaviorRate)
//	min, max : the pool's bounds
//
// The HPA keeps its recommendations and scale events in the memory of one
// controller; here both are the ScaleEvents of the replicated state, so a
// new leader honours what the previous one recommended and did.
//
// Everything here is pure and deterministic: Decide never reads the clock
// (the caller passes Now), never writes to Raft, never calls a provider and
// starts no goroutine; the same Input always gives the same event. The
// leader's autoscaler loop gathers the Input, records the returned event
// through Raft (which applies an acting one to the pool) and calls the
// pool's provider.
package autoscale
