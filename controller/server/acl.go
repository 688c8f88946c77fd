package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/internal/acl"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// forwardMethod is the controllers' forwarding stream, whose rule the
// controllers' own tokens must pass.
const forwardMethod = "/hostscale.peer.v1.PeerService/Forward"

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
	"/hostscale.v1.PoolService/GetUnplaced":     acl.Read,
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

	// Tokens grant roles: only operators manage them.
	"/hostscale.v1.TokenService/CreateToken": acl.Operator,
	"/hostscale.v1.TokenService/ListTokens":  acl.Operator,
	"/hostscale.v1.TokenService/DeleteToken": acl.Operator,

	// A controller's calls to another: the forwarding stream a leader
	// serves when a follower cannot use its Raft port. A forwarded call
	// was admitted by the controller that took it.
	forwardMethod: acl.Operator,
}

// lookupToken finds a secret's token in the -acl-file, then among the
// replicated tokens of f.
func lookupToken(file *acl.File, f *fsm.FSM) func(secret string) (acl.Token, bool) {
	return func(secret string) (acl.Token, bool) {
		sum := sha256.Sum256([]byte(secret))
		if tok, ok := file.Tokens().LookupSum(sum); ok {
			return tok, true
		}
		stored, ok := f.TokenBySum(sum)
		if !ok || (stored.ExpireTime != nil && !time.Now().Before(stored.ExpireTime.AsTime())) {
			return acl.Token{}, false
		}
		// Roles were checked when the token was created; one a newer
		// controller wrote and this one does not know grants nothing.
		var roles acl.Role
		for _, name := range stored.Roles {
			if r, err := acl.ParseRole(name); err == nil {
				roles |= r
			}
		}
		return acl.Token{Name: stored.Name, Roles: roles, Pools: stored.Pools}, true
	}
}

// reapTokens deletes, while this controller leads, the stored tokens that
// expired Config.TokenReapAfter ago or more, checking every minute (or
// every TokenReapAfter, when shorter).
func (s *Server) reapTokens(ctx context.Context) error {
	after := s.cfg.TokenReapAfter
	t := time.NewTicker(min(time.Minute, after))
	defer t.Stop()
	for {
		var gone []string
		now := time.Now()
		s.fsm.Read(func(st *pb.State) {
			for name, tok := range st.Tokens {
				if tok.ExpireTime != nil && now.Sub(tok.ExpireTime.AsTime()) >= after {
					gone = append(gone, name)
				}
			}
		})
		for _, name := range gone {
			if _, err := s.core.Apply(&pb.Command{Command: &pb.Command_DeleteToken{DeleteToken: &pb.DeleteTokenCommand{Name: name}}}); err != nil && status.Code(err) != codes.NotFound {
				s.logger.Warn("delete an expired token", "token", name, "err", err)
				continue
			}
			s.logger.Info("expired token deleted", "token", name)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// audited says which calls the controller logs at info level, with their
// caller and peer, whatever their outcome: those that change the state or
// the cluster (the write and operator methods), but the controllers'
// forwarding stream, whose calls the controller that took them logs.
func audited(method string) bool {
	if method == forwardMethod {
		return false
	}
	r := ACLRules[method]
	return r == acl.Write || r == acl.Operator
}

// poolScope says, for each method a token limited to pools may call, the
// pool a request names ("" when it names none), and how to drop from a
// response what lies outside the token's pools, for the methods that
// answer about every pool when the request names none.
var poolScope = map[string]struct {
	pool   func(req any) string
	filter func(resp any, tok acl.Token)
}{
	"/hostscale.v1.PoolService/GetPool":         {pool: func(r any) string { return r.(*pb.GetPoolRequest).GetPool() }},
	"/hostscale.v1.PoolService/CreatePool":      {pool: func(r any) string { return r.(*pb.CreatePoolRequest).GetPool().GetName() }},
	"/hostscale.v1.PoolService/UpdatePool":      {pool: func(r any) string { return r.(*pb.UpdatePoolRequest).GetPool().GetName() }},
	"/hostscale.v1.PoolService/DeletePool":      {pool: func(r any) string { return r.(*pb.DeletePoolRequest).GetPool() }},
	"/hostscale.v1.PoolService/AddBackend":      {pool: func(r any) string { return r.(*pb.AddBackendRequest).GetPool() }},
	"/hostscale.v1.PoolService/RemoveBackend":   {pool: func(r any) string { return r.(*pb.RemoveBackendRequest).GetPool() }},
	"/hostscale.v1.PoolService/ScalePool":       {pool: func(r any) string { return r.(*pb.ScalePoolRequest).GetPool() }},
	"/hostscale.v1.PoolService/ListScaleEvents": {pool: func(r any) string { return r.(*pb.ListScaleEventsRequest).GetPool() }},
	"/hostscale.v1.PoolService/ListPools": {filter: func(r any, tok acl.Token) {
		resp := r.(*pb.ListPoolsResponse)
		resp.Pools = slices.DeleteFunc(resp.Pools, func(p *pb.Pool) bool { return !tok.PoolAllowed(p.GetName()) })
	}},
	"/hostscale.v1.PoolService/ListInstances": {
		pool: func(r any) string { return r.(*pb.ListInstancesRequest).GetPool() },
		filter: func(r any, tok acl.Token) {
			resp := r.(*pb.ListInstancesResponse)
			resp.Instances = slices.DeleteFunc(resp.Instances, func(in *pb.Instance) bool { return !tok.PoolAllowed(in.GetPool()) })
		},
	},
	"/hostscale.v1.PoolService/GetTraffic": {
		pool: func(r any) string { return r.(*pb.GetTrafficRequest).GetPool() },
		filter: func(r any, tok acl.Token) {
			resp := r.(*pb.GetTrafficResponse)
			resp.Pools = slices.DeleteFunc(resp.Pools, func(p *pb.PoolTraffic) bool { return !tok.PoolAllowed(p.GetPool()) })
		},
	},
	"/hostscale.v1.PoolService/GetUnplaced": {
		pool: func(r any) string { return r.(*pb.GetUnplacedRequest).GetPool() },
		filter: func(r any, tok acl.Token) {
			resp := r.(*pb.GetUnplacedResponse)
			resp.Pools = slices.DeleteFunc(resp.Pools, func(p *pb.UnplacedPool) bool { return !tok.PoolAllowed(p.GetPool()) })
		},
	},
}

// poolScopeInterceptor holds a token limited to pools to them: it may
// call only the methods of poolScope, on a pool of its own, and lists
// answer it only its own. It runs on the controller that took the call,
// after the ACL check; the leader runs a forwarded call as admitted.
func poolScopeInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	tok, ok := acl.FromContext(ctx)
	if !ok || len(tok.Pools) == 0 {
		return handler(ctx, req)
	}
	scope, ok := poolScope[info.FullMethod]
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "token %q is limited to the pools %s: it may not call %s", tok.Name, strings.Join(tok.Pools, ","), info.FullMethod)
	}
	name := ""
	if scope.pool != nil {
		name = scope.pool(req)
	}
	switch {
	case name == "" && scope.filter == nil:
		// The handler refuses a request without a pool.
	case name != "" && !tok.PoolAllowed(name):
		return nil, status.Errorf(codes.PermissionDenied, "token %q is limited to the pools %s: not %q", tok.Name, strings.Join(tok.Pools, ","), name)
	}
	resp, err := handler(ctx, req)
	if err == nil && name == "" && scope.filter != nil {
		scope.filter(resp, tok)
	}
	return resp, err
}

// raftPortAuthenticator admits on the Raft port the tokens that lookup
// finds with the right to the controllers' forwarding stream (operator):
// the controllers' own.
func raftPortAuthenticator(lookup func(secret string) (acl.Token, bool)) func(secret string) error {
	return func(secret string) error {
		tok, ok := lookup(secret)
		switch {
		case !ok:
			return errors.New("the token is not one this controller knows")
		case !ACLRules.Admits(tok, forwardMethod):
			return fmt.Errorf("token %q has roles %v; the raft port needs a controller's, with operator", tok.Name, tok.Roles)
		}
		return nil
	}
}

// refusalLog logs the Raft port's refusals, at most one each every, with
// how many it left out since the last: a peer without the token redials
// at Raft's pace.
type refusalLog struct {
	logger     *slog.Logger
	every      time.Duration
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (l *refusalLog) log(from net.Addr, err error) {
	l.mu.Lock()
	now := time.Now()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	l.mu.Unlock()
	l.logger.Warn("raft port: refused a connection without a controller's token", "from", from.String(), "err", err, "refusals_not_logged", n)
}
