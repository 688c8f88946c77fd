package server

import "github.com/hostscale/hostscale/internal/acl"

// ACLRules says which role each method of the controller's API needs when
// the controller enforces ACLs (Config.ACL). A method missing here is
// refused to every token; TestACLRules_coverEveryMethod keeps the table
// whole.
var ACLRules = acl.Rules{
	"/hostscale.v1.ClusterService/GetStatus":          acl.Read,
	"/hostscale.v1.ClusterService/ListMembers":        acl.Read,
	"/hostscale.v1.ClusterService/AddMember":          acl.Operator,
	"/hostscale.v1.ClusterService/RemoveMember":       acl.Operator,
	"/hostscale.v1.ClusterService/TransferLeadership": acl.Operator,
	// A snapshot holds the whole state; restoring one replaces it.
	"/hostscale.v1.ClusterService/SaveSnapshot":    acl.Operator,
	"/hostscale.v1.ClusterService/RestoreSnapshot": acl.Operator,

	"/hostscale.v1.PoolService/GetPool":         acl.Read,
	"/hostscale.v1.PoolService/ListPools":       acl.Read,
	"/hostscale.v1.PoolService/ListInstances":   acl.Read,
	"/hostscale.v1.PoolService/ListScaleEvents": acl.Read,
	"/hostscale.v1.PoolService/GetTraffic":      acl.Read,
	"/hostscale.v1.PoolService/CreatePool":      acl.Write,
	"/hostscale.v1.PoolService/UpdatePool":      acl.Write,
	"/hostscale.v1.PoolService/DeletePool":      acl.Write,
	"/hostscale.v1.PoolService/AddBackend":      acl.Write,
	"/hostscale.v1.PoolService/RemoveBackend":   acl.Write,
	"/hostscale.v1.PoolService/ScalePool":       acl.Write,

	"/hostscale.v1.NodeService/ListNodes":         acl.Read,
	"/hostscale.v1.NodeService/GetNode":           acl.Read,
	"/hostscale.v1.NodeService/DrainNode":         acl.Write,
	"/hostscale.v1.MetricsService/QueryMetrics":   acl.Read,
	"/hostscale.v1.BalancerService/ListBalancers": acl.Read,

	"/hostscale.v1.AlertService/ListRules":     acl.Read,
	"/hostscale.v1.AlertService/ListAlerts":    acl.Read,
	"/hostscale.v1.AlertService/ListSilences":  acl.Read,
	"/hostscale.v1.AlertService/CreateRule":    acl.Write,
	"/hostscale.v1.AlertService/UpdateRule":    acl.Write,
	"/hostscale.v1.AlertService/DeleteRule":    acl.Write,
	"/hostscale.v1.AlertService/CreateSilence": acl.Write,
	"/hostscale.v1.AlertService/DeleteSilence": acl.Write,

	"/hostscale.v1.AgentService/Connect": acl.Agent,

	"/hostscale.v1.BalancerService/WatchTable":  acl.Balancer,
	"/hostscale.v1.BalancerService/AckTable":    acl.Balancer,
	"/hostscale.v1.BalancerService/ReportStats": acl.Balancer,

	// A controller's calls to another: the forwarding stream a leader
	// serves when a follower cannot use its Raft port. A forwarded call
	// was admitted by the controller that took it.
	"/hostscale.peer.v1.PeerService/Forward": acl.Operator,
}
