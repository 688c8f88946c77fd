// Command hostscale is the operator's command line for a hostscale
// cluster: status, membership, leadership and snapshots.
package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/internal/acl"
	"github.com/hostscale/hostscale/internal/grpcx"
	"github.com/hostscale/hostscale/internal/tlsx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

const usage = `usage: hostscale [-addr host:port[,host:port...]] [-timeout d] [-retry d] [-json]
                 [-tls-ca FILE [-tls-cert FILE -tls-key FILE]] [-token-file FILE] COMMAND [ARGS]

-addr (env HOSTSCALE_ADDR) is one controller or several: the first that answers serves the
command. The default is the three local controllers of make dev and make cluster.
-retry (10s) is how long a call that fails UNAVAILABLE (no leader yet, a controller gone) is
tried again, with the same request id for a write; 0 tries once.
-tls-ca (env HOSTSCALE_CACERT) speaks TLS to controllers whose certificates that CA signed;
-tls-cert and -tls-key (env HOSTSCALE_CLIENT_CERT, HOSTSCALE_CLIENT_KEY) are this client's
certificate, for controllers that require one.
-token-file (env HOSTSCALE_TOKEN_FILE) holds the ACL token sent with every call, for controllers
with an -acl-file; env HOSTSCALE_TOKEN gives the token itself.

commands:
  status                          this node's view: leader, term, indexes, members
  members                         the cluster's members (from the leader)
  join ID RAFT_ADDR [API_ADDR]    add a controller as a voter (first a non-voter, until it has caught up)
  leave ID                        remove a controller
  transfer-leadership [ID]        hand leadership to ID, or to the best voter
  snapshot save FILE              write a snapshot of the whole state to FILE
  snapshot restore FILE           replace the whole state with FILE's snapshot
  pools                           list pools: routes, backends, desired instances (min-max), autoscaling
  create-pool FILE                create a pool from its JSON (FILE or - for stdin), e.g.
                                  {"name":"web","template":{"command":"hostscale-demo","health_path":"/healthz"},"desired":2}
  update-pool FILE                replace a pool's specification from its JSON (FILE or -); a new
                                  template replaces the instances, new ones first
  delete-pool POOL                delete a pool (its instances stop)
  scale POOL N                    run N instances of a pool with a template
  instances [POOL]                list instances: node, address, state, restarts
  unplaced [POOL]                 the pools whose wanted instances no node can take, how many, since
                                  when and why (from the leader's scheduler)
  events POOL [-acted]            the autoscaler's evaluations of a pool, newest first: why it scaled
  traffic [POOL] [-window 1m]     each pool's requests/s, errors, latency and requests in flight at the
                                  balancers; with POOL, per backend too
  balancers                       the balancers the leader heard from: the table each applied, in sync
                                  or not, and their last stats report (lost: none for too long)
  load [-rates 20,100,200,0] [-step 30s] [-url http://127.0.0.1:8080/]
                                  send requests at each rate for a step, printing what answered
  drain NODE                      move a node's instances elsewhere; no new placements
  undrain NODE                    let a drained node take placements again
  nodes [SELECTOR]                list nodes (label selector: tier=web,zone!=b)
  node NAME                       one node: status, facts, labels, conditions and why, latest sample
  rules                           list alerting rules
  create-rule FILE                create an alerting rule from its JSON (FILE or -), e.g.
                                  {"name":"web-errors","kind":"ALERT_RULE_KIND_POOL_THRESHOLD","metric":"error_ratio",
                                   "op":">","threshold":0.05,"for":"120s","selector":"pool=web"}
  update-rule FILE                replace an alerting rule from its JSON (FILE or -)
  delete-rule NAME                delete an alerting rule (its alerts end)
  alerts                          list pending, firing and resolved alerts
  silence DURATION MATCHER...     silence alerts for a while (matchers: alertname=cpu-high node=~web-.*)
  unsilence ID                    end a silence
  token new NAME ROLE[,ROLE...] [-pools POOL,...]
                                  make a new random ACL token: prints it, and the -acl-file line that
                                  grants it the roles (read, write, operator, agent, balancer) by its
                                  SHA-256 digest, so that the file need not hold the secret; -pools
                                  limits a read or write token to those pools (shop-* for a prefix)
  token create NAME ROLE[,ROLE...] [DESCRIPTION] [-ttl DURATION] [-pools POOL,...]
                                  make a new random ACL token and store it in the cluster (by its
                                  digest): every controller with an -acl-file admits it, until it
                                  expires with -ttl; prints it once
  token list                      the tokens stored in the cluster: name, roles, created when and by whom
  token delete NAME               delete a stored token: every controller refuses it from then on
`

// defaultAddr is the controllers of `make dev` and `make cluster`, which
// also holds a lone controller on the default -grpc-addr.
const defaultAddr = "127.0.0.1:7700,127.0.0.1:7710,127.0.0.1:7720"

// readPages calls page with each page's token, the first one empty, until
// a page is the last (it returns no next token) or fails.
func readPages(page func(token string) (next string, err error)) error {
	for token := ""; ; {
		next, err := page(token)
		if err != nil || next == "" {
			return err
		}
		token = next
	}
}

// listPageSize is the page size of the lists the CLI reads page by page
// (pools, nodes, instances): the API's largest.
var listPageSize int32 = 1000

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hostscale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	addr := fs.String("addr", envOr("HOSTSCALE_ADDR", defaultAddr), "controller gRPC `addresses`, comma-separated: the first that answers serves the command (env HOSTSCALE_ADDR)")
	timeout := fs.Duration("timeout", 30*time.Second, "deadline of the whole command")
	retry := fs.Duration("retry", 10*time.Second, "how long a call failing UNAVAILABLE (no leader yet, a controller gone) is tried again; 0: once")
	asJSON := fs.Bool("json", false, "print responses as JSON")
	var tlsFiles tlsx.Files
	fs.StringVar(&tlsFiles.CA, "tls-ca", os.Getenv("HOSTSCALE_CACERT"), "PEM `file` of the CA that signs the controllers' certificates: speak TLS (env HOSTSCALE_CACERT)")
	fs.StringVar(&tlsFiles.Cert, "tls-cert", os.Getenv("HOSTSCALE_CLIENT_CERT"), "PEM `file` of this client's certificate, for controllers that require one (env HOSTSCALE_CLIENT_CERT)")
	fs.StringVar(&tlsFiles.Key, "tls-key", os.Getenv("HOSTSCALE_CLIENT_KEY"), "PEM `file` of -tls-cert's key (env HOSTSCALE_CLIENT_KEY)")
	tokenFile := fs.String("token-file", os.Getenv("HOSTSCALE_TOKEN_FILE"), "`file` holding the ACL token sent with every call (env HOSTSCALE_TOKEN_FILE; env HOSTSCALE_TOKEN gives the token itself)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.Arg(0) == "token" && fs.Arg(1) == "new" {
		return newToken(fs.Args()[1:], stdout, stderr)
	}
	token := os.Getenv("HOSTSCALE_TOKEN")
	if *tokenFile != "" {
		f, err := acl.ReadTokenFile(*tokenFile)
		if err != nil {
			fmt.Fprintf(stderr, "hostscale: -token-file: %v\n", err)
			return 2
		}
		token = f.Token()
	} else if token != "" {
		if err := acl.CheckToken(token); err != nil {
			fmt.Fprintf(stderr, "hostscale: HOSTSCALE_TOKEN: %v\n", err)
			return 2
		}
	}
	if *retry < 0 {
		fmt.Fprintf(stderr, "hostscale: -retry %v: must not be negative\n", *retry)
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var addrs []string
	for _, a := range strings.Split(*addr, ",") {
		if a = strings.TrimSpace(a); a != "" {
			addrs = append(addrs, a)
		}
	}
	// A command during an election, or sent to a controller that just
	// went, waits for the new leader instead of failing (-retry); a write
	// keeps one request id, so it applies once.
	clientTLS, err := tlsFiles.Client()
	if err != nil {
		fmt.Fprintf(stderr, "hostscale: %v\n", err)
		return 2
	}
	conn, err := grpcx.DialAny(addrs, grpcx.WithTLS(clientTLS), grpc.WithPerRPCCredentials(acl.Credentials(func() string { return token })),
		grpc.WithChainUnaryInterceptor(grpcx.RetryUnavailable(100*time.Millisecond, time.Second, *retry)))
	if err != nil {
		fmt.Fprintf(stderr, "hostscale: -addr %q: %v\n", *addr, err)
		return 2
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	c := &cli{cluster: pb.NewClusterServiceClient(conn), pools: pb.NewPoolServiceClient(conn), lbs: pb.NewBalancerServiceClient(conn), nodes: pb.NewNodeServiceClient(conn),
		alerts: pb.NewAlertServiceClient(conn), tokens: pb.NewTokenServiceClient(conn), out: stdout, json: *asJSON}
	err = c.do(ctx, fs.Args())
	var ue usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "hostscale: %v\n%s", err, usage)
		return 2
	case err != nil:
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(stderr, "hostscale: %s: %s\n", st.Code(), st.Message())
		} else {
			fmt.Fprintf(stderr, "hostscale: %v\n", err)
		}
		return 1
	}
	return 0
}

type usageError string

func (e usageError) Error() string { return string(e) }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type cli struct {
	cluster pb.ClusterServiceClient
	pools   pb.PoolServiceClient
	lbs     pb.BalancerServiceClient
	nodes   pb.NodeServiceClient
	alerts  pb.AlertServiceClient
	tokens  pb.TokenServiceClient
	out     io.Writer
	json    bool
}

func (c *cli) do(ctx context.Context, args []string) error {
	cmd, rest := args[0], args[1:]
	nargs := func(lo, hi int) error {
		if len(rest) < lo || len(rest) > hi {
			return usageError(fmt.Sprintf("%s: wrong number of arguments", cmd))
		}
		return nil
	}
	switch cmd {
	case "status":
		if err := nargs(0, 0); err != nil {
			return err
		}
		st, err := c.cluster.GetStatus(ctx, &pb.GetStatusRequest{})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(st)
		}
		fmt.Fprintf(c.out, "node %s: %s, term %d, commit %d, applied %d\nleader: %s (%s)\nfailure tolerance: %d (more voters that can fail before the cluster stops committing)\n\n",
			st.Id, strings.TrimPrefix(st.State.String(), "RAFT_STATE_"), st.Term, st.CommitIndex, st.AppliedIndex,
			orDash(st.Leader.GetId()), orDash(st.Leader.GetApiAddress()), st.FailureTolerance)
		c.printMembers(st.Members)
		return nil
	case "members":
		if err := nargs(0, 0); err != nil {
			return err
		}
		resp, err := c.cluster.ListMembers(ctx, &pb.ListMembersRequest{Consistent: true})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		c.printMembers(resp.Members)
		return nil
	case "join":
		if err := nargs(2, 3); err != nil {
			return err
		}
		req := &pb.AddMemberRequest{Id: rest[0], RaftAddress: rest[1]}
		if len(rest) == 3 {
			req.ApiAddress = rest[2]
		}
		resp, err := c.cluster.AddMember(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "added %s at index %d\n", rest[0], resp.Index)
		if resp.Promoting {
			fmt.Fprintf(c.out, "%s joins as a non-voter: the leader promotes it to voter once it has caught up and stayed healthy for its -server-stabilization-time\n", rest[0])
		}
		return nil
	case "leave":
		if err := nargs(1, 1); err != nil {
			return err
		}
		resp, err := c.cluster.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: rest[0]})
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "removed %s at index %d\n", rest[0], resp.Index)
		return nil
	case "transfer-leadership":
		if err := nargs(0, 1); err != nil {
			return err
		}
		req := &pb.TransferLeadershipRequest{}
		if len(rest) == 1 {
			req.Id = rest[0]
		}
		resp, err := c.cluster.TransferLeadership(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "leader is now %s\n", orDash(resp.LeaderId))
		return nil
	case "snapshot":
		if err := nargs(2, 2); err != nil {
			return err
		}
		switch rest[0] {
		case "save":
			return c.snapshotSave(ctx, rest[1])
		case "restore":
			return c.snapshotRestore(ctx, rest[1])
		}
		return usageError("snapshot: want save or restore")
	case "pools":
		if err := nargs(0, 0); err != nil {
			return err
		}
		resp := &pb.ListPoolsResponse{}
		if err := readPages(func(token string) (string, error) {
			page, err := c.pools.ListPools(ctx, &pb.ListPoolsRequest{PageSize: listPageSize, PageToken: token, Consistent: true})
			resp.Pools, resp.Index = append(resp.Pools, page.GetPools()...), page.GetIndex()
			return page.GetNextPageToken(), err
		}); err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tHOSTS\tPATH\tPOLICY\tBACKENDS\tINSTANCES\tAUTOSCALING")
		for _, p := range resp.Pools {
			instances := "-"
			if p.Template != nil || p.Scaling != nil {
				instances = fmt.Sprintf("%d (%d-%d)", p.Desired, p.Min, p.Max)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", p.Name, orDash(strings.Join(p.Hosts, ",")), p.PathPrefix,
				strings.ToLower(strings.TrimPrefix(p.Policy.String(), "POLICY_")), len(p.Backends), instances, scalingSummary(p.Scaling))
		}
		return w.Flush()
	case "create-pool", "update-pool":
		if err := nargs(1, 1); err != nil {
			return err
		}
		return c.putPool(ctx, rest[0], cmd == "update-pool")
	case "create-rule", "update-rule":
		if err := nargs(1, 1); err != nil {
			return err
		}
		return c.putRule(ctx, rest[0], cmd == "update-rule")
	case "delete-rule":
		if err := nargs(1, 1); err != nil {
			return err
		}
		_, err := c.alerts.DeleteRule(ctx, &pb.DeleteRuleRequest{Rule: rest[0]})
		return err
	case "delete-pool":
		if err := nargs(1, 1); err != nil {
			return err
		}
		_, err := c.pools.DeletePool(ctx, &pb.DeletePoolRequest{Pool: rest[0]})
		return err
	case "scale":
		if err := nargs(2, 2); err != nil {
			return err
		}
		n, err := strconv.ParseUint(rest[1], 10, 32)
		if err != nil {
			return usageError(fmt.Sprintf("scale: %q is not a number of instances", rest[1]))
		}
		resp, err := c.pools.ScalePool(ctx, &pb.ScalePoolRequest{Pool: rest[0], Desired: uint32(n)})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		fmt.Fprintf(c.out, "pool %s: %d instances wanted (index %d)\n", resp.Pool.GetName(), resp.Pool.GetDesired(), resp.Index)
		if p := resp.Pool; p.GetScaling() != nil {
			fmt.Fprintf(c.out, "note: %s is autoscaled (%d-%d, %s); its next evaluations set the count the load needs, as the HPA does after kubectl scale\n",
				p.GetName(), p.GetMin(), p.GetMax(), scalingSummary(p.GetScaling()))
		}
		return nil
	case "instances":
		if err := nargs(0, 1); err != nil {
			return err
		}
		req := &pb.ListInstancesRequest{PageSize: listPageSize, Consistent: true}
		if len(rest) == 1 {
			req.Pool = rest[0]
		}
		resp := &pb.ListInstancesResponse{}
		if err := readPages(func(token string) (string, error) {
			req.PageToken = token
			page, err := c.pools.ListInstances(ctx, req)
			resp.Instances, resp.Index = append(resp.Instances, page.GetInstances()...), page.GetIndex()
			return page.GetNextPageToken(), err
		}); err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tNODE\tADDRESS\tSTATE\tRESTARTS\tMESSAGE")
		for _, in := range resp.Instances {
			st := strings.ToLower(strings.TrimPrefix(in.State.String(), "INSTANCE_STATE_"))
			switch {
			case in.Stop:
				st += ",stop"
			case in.Draining:
				st += ",draining"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", in.Id, in.Node, orDash(in.Address), st, in.Restarts, orDash(in.Message))
		}
		return w.Flush()
	case "events":
		if len(rest) < 1 || len(rest) > 2 || (len(rest) == 2 && rest[1] != "-acted") {
			return usageError("events: want POOL [-acted]")
		}
		resp, err := c.pools.ListScaleEvents(ctx, &pb.ListScaleEventsRequest{Pool: rest[0], ActedOnly: len(rest) == 2, PageSize: 50})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tTIME\tOBSERVED\tTARGET\tREADY\tRAW\tDESIRED\tLIMITED BY\tREASON")
		for _, ev := range resp.Events {
			change := fmt.Sprintf("%d", ev.Desired)
			if ev.Acted {
				change = fmt.Sprintf("%d→%d", ev.PreviousDesired, ev.Desired)
			}
			fmt.Fprintf(w, "%s\t%s\t%.1f\t%.1f\t%d/%d\t%d\t%s\t%s\t%s\n", ev.Id, ev.Time.AsTime().Local().Format("15:04:05"),
				ev.ObservedValue, ev.Target, ev.Ready, ev.Current, ev.RawDesired, change, orDash(ev.LimitedBy), ev.Reason)
		}
		return w.Flush()
	case "traffic":
		return c.traffic(ctx, rest)
	case "unplaced":
		if err := nargs(0, 1); err != nil {
			return err
		}
		req := &pb.GetUnplacedRequest{}
		if len(rest) == 1 {
			req.Pool = rest[0]
		}
		resp, err := c.pools.GetUnplaced(ctx, req)
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		if len(resp.Pools) == 0 {
			fmt.Fprintln(c.out, "every wanted instance has a node")
			return nil
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "POOL\tUNPLACED\tSINCE\tWHY")
		now := time.Now()
		for _, u := range resp.Pools {
			fmt.Fprintf(w, "%s\t%d\t%s ago\t%s\n", u.Pool, u.Instances, now.Sub(u.Since.AsTime()).Round(time.Second), u.Why)
		}
		return w.Flush()
	case "balancers":
		if err := nargs(0, 0); err != nil {
			return err
		}
		return c.balancers(ctx)
	case "load":
		return c.load(ctx, rest)
	case "drain", "undrain":
		if err := nargs(1, 1); err != nil {
			return err
		}
		resp, err := c.nodes.DrainNode(ctx, &pb.DrainNodeRequest{Node: rest[0], Undo: cmd == "undrain"})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		fmt.Fprintf(c.out, "node %s: %s\n", resp.Node.GetName(), strings.ToLower(strings.TrimPrefix(resp.Node.GetStatus().String(), "NODE_STATUS_")))
		return nil
	case "node":
		if err := nargs(1, 1); err != nil {
			return err
		}
		resp, err := c.nodes.GetNode(ctx, &pb.GetNodeRequest{Node: rest[0], Consistent: true})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		return printNode(c.out, resp.Node, time.Now())
	case "nodes":
		if err := nargs(0, 1); err != nil {
			return err
		}
		req := &pb.ListNodesRequest{PageSize: listPageSize, Consistent: true}
		if len(rest) == 1 {
			req.Selector = rest[0]
		}
		resp := &pb.ListNodesResponse{}
		if err := readPages(func(token string) (string, error) {
			req.PageToken = token
			page, err := c.nodes.ListNodes(ctx, req)
			resp.Nodes, resp.Index = append(resp.Nodes, page.GetNodes()...), page.GetIndex()
			return page.GetNextPageToken(), err
		}); err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tSTATUS\tCONDITIONS\tCPU%\tMEM%\tLOAD1\tRESERVED\tLAST SEEN\tLABELS")
		for _, n := range resp.Nodes {
			seen := "-"
			if n.LastHeartbeat != nil {
				seen = time.Since(n.LastHeartbeat.AsTime()).Round(100*time.Millisecond).String() + " ago"
			}
			var labels []string
			for k, v := range n.Labels {
				labels = append(labels, k+"="+v)
			}
			slices.Sort(labels)
			reserved := "-"
			if r := n.Reserved; r != nil {
				reserved = fmt.Sprintf("%.2f/%d cores %d/%d MiB", float64(r.CpuMillicores)/1000, n.Facts.GetCpuCount(),
					r.MemoryBytes>>20, n.Facts.GetMemoryBytes()>>20)
			}
			var conds []string
			for _, c := range n.Conditions {
				conds = append(conds, conditionName(c.Type))
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%.1f\t%.1f\t%.2f\t%s\t%s\t%s\n", n.Name, strings.ToLower(strings.TrimPrefix(n.Status.String(), "NODE_STATUS_")),
				orDash(strings.Join(conds, ",")), n.Latest.GetCpuPercent(), n.Latest.GetMemoryUsedPercent(), n.Latest.GetLoad1(), reserved, seen, orDash(strings.Join(labels, ",")))
		}
		return w.Flush()
	case "rules":
		if err := nargs(0, 0); err != nil {
			return err
		}
		resp, err := c.alerts.ListRules(ctx, &pb.ListRulesRequest{Consistent: true})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tEXPR\tFOR\tSELECTOR\tSEVERITY")
		for _, r := range resp.Rules {
			expr := fmt.Sprintf("%s %s %g", r.Metric, r.Op, r.Threshold)
			switch r.Kind {
			case pb.AlertRuleKind_ALERT_RULE_KIND_NODE_DOWN:
				expr = "node down"
			case pb.AlertRuleKind_ALERT_RULE_KIND_NODE_CONDITION:
				expr = "node under " + cmp.Or(r.Metric, "any condition")
			case pb.AlertRuleKind_ALERT_RULE_KIND_POOL_THRESHOLD:
				window := time.Minute
				if r.Window != nil {
					window = r.Window.AsDuration()
				}
				expr = fmt.Sprintf("pool %s %s %g over %v", r.Metric, r.Op, r.Threshold, window)
			}
			fmt.Fprintf(w, "%s\t%s\t%v\t%s\t%s\n", r.Name, expr, r.For.AsDuration(), orDash(r.Selector),
				severityName(r.Severity))
		}
		return w.Flush()
	case "alerts":
		if err := nargs(0, 0); err != nil {
			return err
		}
		resp, err := c.alerts.ListAlerts(ctx, &pb.ListAlertsRequest{Consistent: true})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "RULE\tON\tSTATE\tVALUE\tSINCE")
		for _, a := range resp.Alerts {
			on := "-"
			switch {
			case a.Node != "":
				on = "node " + a.Node
			case a.Pool != "":
				on = "pool " + a.Pool
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%g\t%s\n", a.Rule, on, strings.ToLower(strings.TrimPrefix(a.State.String(), "ALERT_STATE_")),
				a.Value, a.ActiveSince.AsTime().Format(time.RFC3339))
		}
		return w.Flush()
	case "silence":
		if len(rest) < 2 {
			return usageError("silence: want DURATION and at least one MATCHER")
		}
		d, err := time.ParseDuration(rest[0])
		if err != nil || d <= 0 {
			return usageError(fmt.Sprintf("silence: %q is not a positive duration", rest[0]))
		}
		sil := &pb.Silence{EndsAt: timestamppb.New(time.Now().Add(d)), CreatedBy: os.Getenv("USER")}
		for _, m := range rest[1:] {
			pm, err := parseMatcher(m)
			if err != nil {
				return usageError("silence: " + err.Error())
			}
			sil.Matchers = append(sil.Matchers, pm)
		}
		resp, err := c.alerts.CreateSilence(ctx, &pb.CreateSilenceRequest{Silence: sil})
		if err != nil {
			return err
		}
		fmt.Fprintf(c.out, "silence %s until %s\n", resp.Silence.Id, resp.Silence.EndsAt.AsTime().Format(time.RFC3339))
		return nil
	case "unsilence":
		if err := nargs(1, 1); err != nil {
			return err
		}
		if _, err := c.alerts.DeleteSilence(ctx, &pb.DeleteSilenceRequest{Silence: rest[0]}); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "silence %s ended\n", rest[0])
		return nil
	case "token":
		return c.token(ctx, rest)
	}
	return usageError(fmt.Sprintf("unknown command %q", cmd))
}

func (c *cli) printMembers(ms []*pb.Member) {
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSUFFRAGE\tRAFT\tAPI\tREACHABLE\tLEADER")
	for _, m := range ms {
		suffrage := strings.ToLower(strings.TrimPrefix(m.Suffrage.String(), "SUFFRAGE_"))
		if m.Promoting {
			suffrage += " (promoting)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\t%v\n", m.Id, suffrage, m.RaftAddress, orDash(m.ApiAddress), m.Reachable, m.Leader)
	}
	_ = w.Flush()
	for _, m := range ms {
		if m.Promoting && m.Promotion != "" {
			fmt.Fprintf(c.out, "%s is not a voter yet: %s\n", m.Id, m.Promotion)
		}
	}
}

func (c *cli) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.out, string(b))
	return err
}

// putPool creates, or updates, the pool a JSON file (hostscale.v1.Pool in
// protojson) describes.
// readJSON reads a message's JSON from path, or from stdin for "-"; what
// names the message in an error.
func readJSON(path, what string, m proto.Message) error {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return err
	}
	if err := protojson.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%s: not %s: %w", path, what, err)
	}
	return nil
}

// putRule creates or replaces an alerting rule from its JSON.
func (c *cli) putRule(ctx context.Context, path string, update bool) error {
	r := &pb.AlertRule{}
	if err := readJSON(path, "an alerting rule", r); err != nil {
		return err
	}
	var (
		rule  *pb.AlertRule
		index uint64
		verb  = "created"
	)
	if update {
		resp, err := c.alerts.UpdateRule(ctx, &pb.UpdateRuleRequest{Rule: r})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		rule, index, verb = resp.Rule, resp.Index, "updated"
	} else {
		resp, err := c.alerts.CreateRule(ctx, &pb.CreateRuleRequest{Rule: r})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		rule, index = resp.Rule, resp.Index
	}
	fmt.Fprintf(c.out, "rule %s %s (index %d)\n", rule.GetName(), verb, index)
	return nil
}

func (c *cli) putPool(ctx context.Context, path string, update bool) error {
	p := &pb.Pool{}
	if err := readJSON(path, "a pool", p); err != nil {
		return err
	}
	if update {
		resp, err := c.pools.UpdatePool(ctx, &pb.UpdatePoolRequest{Pool: p})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		fmt.Fprintf(c.out, "pool %s updated (index %d)\n", resp.Pool.GetName(), resp.Index)
		return nil
	}
	resp, err := c.pools.CreatePool(ctx, &pb.CreatePoolRequest{Pool: p})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	fmt.Fprintf(c.out, "pool %s created (index %d)\n", resp.Pool.GetName(), resp.Index)
	return nil
}

// traffic prints the balancers' traffic per pool, or one pool's with its
// backends.
func (c *cli) traffic(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("traffic", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	window := fs.Duration("window", time.Minute, "rates over this window")
	var pool string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pool, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return usageError("traffic: " + err.Error())
	}
	if fs.NArg() > 0 {
		return usageError("traffic: want [POOL] [-window D]")
	}
	resp, err := c.pools.GetTraffic(ctx, &pb.GetTrafficRequest{Pool: pool, Window: durationpb.New(*window)})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "POOL\tREQ/S\tERR/S\tERR%\tP50\tP95\tP99\tIN FLIGHT\tWAITING")
	partial := false
	for _, p := range resp.Pools {
		name := p.Pool
		if !p.Covered {
			name += "*"
			partial = true
		}
		fmt.Fprintf(w, "%s\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%.1f\t%d\n", name, p.RequestRate, p.ErrorRate, 100*p.ErrorRatio,
			ms(p.P50LatencyMs), ms(p.P95LatencyMs), ms(p.P99LatencyMs), p.InFlight, p.Waiting)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if partial {
		fmt.Fprintf(c.out, "* the leader (%s) has reports for less than the %v window\n", resp.Leader, *window)
	}
	if pool == "" || len(resp.Pools) == 0 || len(resp.Pools[0].Backends) == 0 {
		return nil
	}
	fmt.Fprintln(c.out)
	w = tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "BACKEND\tINSTANCE\tREQ/S\tERR/S\tIN FLIGHT")
	for _, b := range resp.Pools[0].Backends {
		fmt.Fprintf(w, "%s\t%s\t%.1f\t%.1f\t%.1f\n", b.Address, orDash(b.Instance), b.RequestRate, b.ErrorRate, b.InFlight)
	}
	return w.Flush()
}

// balancers prints the balancers the leader heard from.
func (c *cli) balancers(ctx context.Context) error {
	req := &pb.ListBalancersRequest{PageSize: 1000}
	resp := &pb.ListBalancersResponse{}
	if err := readPages(func(token string) (string, error) {
		req.PageToken = token
		page, err := c.lbs.ListBalancers(ctx, req)
		resp.Balancers = append(resp.Balancers, page.GetBalancers()...)
		resp.Index, resp.TableVersion, resp.Leader = page.GetIndex(), page.GetTableVersion(), page.GetLeader()
		return page.GetNextPageToken(), err
	}); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(resp)
	}
	version := func(v *pb.TableVersion) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%d/%d", v.Term, v.Index)
	}
	ago := func(t interface{ AsTime() time.Time }, set bool) string {
		if !set {
			return "-"
		}
		return time.Since(t.AsTime()).Round(100*time.Millisecond).String() + " ago"
	}
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tTABLE\tIN SYNC\tACKED\tREPORTED\tERROR")
	for _, b := range resp.Balancers {
		sync := "no"
		if b.InSync {
			sync = "yes"
		}
		reported := ago(b.ReportedAt, b.ReportedAt != nil)
		if b.Lost {
			reported += " (lost)"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", b.Name, version(b.AckedVersion), sync,
			ago(b.AckedAt, b.AckedAt != nil), reported, orDash(b.AckError))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "table in force %s, from the leader %s\n", version(resp.TableVersion), resp.Leader)
	return nil
}

// ms writes a latency in ms, "-" for none.
func ms(v float64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "ms"
}

// severityName spells a rule's severity; unspecified is warning.
func severityName(s pb.Severity) string {
	if s == pb.Severity_SEVERITY_UNSPECIFIED {
		s = pb.Severity_SEVERITY_WARNING
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "SEVERITY_"))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (c *cli) snapshotSave(ctx context.Context, path string) error {
	stream, err := c.cluster.SaveSnapshot(ctx, &pb.SaveSnapshotRequest{})
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	meta := first.GetMetadata()
	if meta == nil {
		return errors.New("snapshot stream did not start with its metadata")
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	h := sha256.New()
	w := io.MultiWriter(f, h)
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			f.Close()
			return err
		}
		if _, err := w.Write(m.GetChunk()); err != nil {
			f.Close()
			return err
		}
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != meta.Sha256 {
		return fmt.Errorf("snapshot checksum mismatch: got %s, want %s", got, meta.Sha256)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "saved snapshot at index %d (term %d, %d bytes, sha256 %s) to %s\n", meta.Index, meta.Term, meta.Size, meta.Sha256, path)
	return nil
}

func (c *cli) snapshotRestore(ctx context.Context, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	stream, err := c.cluster.RestoreSnapshot(ctx)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	first := true
	for len(data) > 0 || first {
		n := min(len(data), 256<<10)
		req := &pb.RestoreSnapshotRequest{Chunk: data[:n]}
		if first {
			req.Sha256 = hex.EncodeToString(sum[:])
			first = false
		}
		if err := stream.Send(req); err != nil {
			break // the server's error comes from CloseAndRecv
		}
		data = data[n:]
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "restored %d bytes; the state is now at index %d\n", resp.Size, resp.Index)
	return nil
}

// parseMatcher parses name=value, name!=value, name=~re or name!~re.
func parseMatcher(s string) (*pb.SilenceMatcher, error) {
	for _, op := range []string{"!~", "=~", "!=", "="} {
		if name, value, ok := strings.Cut(s, op); ok && name != "" {
			return &pb.SilenceMatcher{Name: name, Value: value, IsEqual: op == "=" || op == "=~", IsRegex: op == "=~" || op == "!~"}, nil
		}
	}
	return nil, fmt.Errorf("%q is not name=value, name!=value, name=~re or name!~re", s)
}

// scalingSummary writes a scaling policy in a few words: its metrics and
// targets, and when it scales to zero.
func scalingSummary(p *pb.ScalingPolicy) string {
	if p == nil {
		return "-"
	}
	name := func(m pb.ScalingMetric) string {
		return strings.ToLower(strings.TrimPrefix(m.String(), "SCALING_METRIC_"))
	}
	parts := []string{fmt.Sprintf("%s %g", name(p.Metric), p.Target)}
	for _, m := range p.Metrics {
		parts = append(parts, fmt.Sprintf("%s %g", name(m.GetMetric()), m.GetTarget()))
	}
	out := strings.Join(parts, ", ")
	if d := p.GetScaleToZeroAfter(); d != nil {
		out += fmt.Sprintf("; to 0 after %v idle", d.AsDuration())
	}
	return out
}

// printNode describes one node, as kubectl describe node does: what the
// list leaves out, the conditions' causes first.
func printNode(w io.Writer, n *pb.Node, now time.Time) error {
	ago := func(t *timestamppb.Timestamp) string {
		if t == nil {
			return "-"
		}
		return fmt.Sprintf("%s (%s ago)", t.AsTime().UTC().Format(time.RFC3339), now.Sub(t.AsTime()).Round(time.Second))
	}
	var labels []string
	for k, v := range n.Labels {
		labels = append(labels, k+"="+v)
	}
	slices.Sort(labels)
	f := n.Facts
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", n.Name)
	fmt.Fprintf(tw, "status:\t%s since %s\n", strings.ToLower(strings.TrimPrefix(n.Status.String(), "NODE_STATUS_")), ago(n.StatusTime))
	fmt.Fprintf(tw, "labels:\t%s\n", orDash(strings.Join(labels, ",")))
	fmt.Fprintf(tw, "host:\t%s, %s %s, kernel %s, agent %s\n", f.GetHostname(), f.GetOs(), f.GetPlatform(), f.GetKernel(), f.GetAgentVersion())
	fmt.Fprintf(tw, "capacity:\t%d cores, %d MiB\n", f.GetCpuCount(), f.GetMemoryBytes()>>20)
	fmt.Fprintf(tw, "reserved:\t%.2f cores, %d MiB\n", float64(n.Reserved.GetCpuMillicores())/1000, n.Reserved.GetMemoryBytes()>>20)
	allowed := "every executable"
	if a := f.GetAllowedCommands(); len(a) > 0 {
		allowed = strings.Join(a, ",")
	}
	fmt.Fprintf(tw, "commands:\t%s\n", allowed)
	fmt.Fprintf(tw, "controller:\t%s, last heard %s\n", orDash(n.Controller), ago(n.LastHeartbeat))
	if l := n.Latest; l != nil {
		fmt.Fprintf(tw, "latest sample:\tcpu %.1f%%, memory %.1f%%, load1 %.2f, %d processes\n", l.CpuPercent, l.MemoryUsedPercent, l.Load1, l.Processes)
	}
	if len(n.Conditions) == 0 {
		fmt.Fprintf(tw, "conditions:\tnone\n")
	}
	for i, c := range n.Conditions {
		head := ""
		if i == 0 {
			head = "conditions:"
		}
		why := ""
		if c.Message != "" {
			why = ": " + c.Message
		}
		fmt.Fprintf(tw, "%s\t%s since %s%s\n", head, conditionName(c.Type), ago(c.Since), why)
	}
	return tw.Flush()
}

// conditionName is a node condition's short name: disk_pressure.
func conditionName(t pb.NodeConditionType) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "NODE_CONDITION_TYPE_"))
}

// newToken prints a new random token for NAME with ROLES, and the
// -acl-file line granting them by the token's digest.
func newToken(args []string, stdout, stderr io.Writer) int {
	pools, args, err := cutFlag(args, "-pools")
	if err != nil || len(args) != 3 {
		fmt.Fprintln(stderr, "usage: hostscale token new NAME ROLE[,ROLE...] [-pools POOL,...]")
		return 2
	}
	name, roles := args[1], args[2]
	rs, err := acl.ParseRoles(strings.Split(roles, ","))
	if err != nil {
		fmt.Fprintf(stderr, "hostscale: token new: %v\n", err)
		return 2
	}
	suffix := ""
	if pools != "" {
		if err := acl.CheckPools(strings.Split(pools, ","), rs); err != nil {
			fmt.Fprintf(stderr, "hostscale: token new: -pools: %v\n", err)
			return 2
		}
		suffix = " pools=" + pools
	}
	if strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == '#' }) {
		fmt.Fprintf(stderr, "hostscale: token new: name %q: no spaces or #\n", name)
		return 2
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		fmt.Fprintf(stderr, "hostscale: token new: %v\n", err)
		return 1
	}
	tok := hex.EncodeToString(b)
	fmt.Fprintf(stdout, "token: %s\nACL file line: %s %s %s%s\n", tok, name, roles, acl.Hash(tok), suffix)
	return 0
}

// cutFlag removes the flag name and its value from args, wherever they
// are, and returns the value ("" when the flag is absent).
func cutFlag(args []string, name string) (value string, rest []string, err error) {
	i := slices.Index(args, name)
	if i < 0 {
		return "", args, nil
	}
	if i+1 >= len(args) {
		return "", nil, usageError(name + " needs a value")
	}
	return args[i+1], slices.Delete(slices.Clone(args), i, i+2), nil
}

// token runs token create, list and delete.
func (c *cli) token(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usageError("token: want new, create, list or delete")
	}
	switch sub, rest := args[0], args[1:]; sub {
	case "create":
		var ttl time.Duration
		ttlText, rest, err := cutFlag(rest, "-ttl")
		if err != nil {
			return err
		}
		if ttlText != "" {
			if ttl, err = time.ParseDuration(ttlText); err != nil || ttl <= 0 {
				return usageError(fmt.Sprintf("token create: -ttl %q: not a positive duration", ttlText))
			}
		}
		pools, rest, err := cutFlag(rest, "-pools")
		if err != nil {
			return err
		}
		if len(rest) < 2 || len(rest) > 3 {
			return usageError("token create: want NAME ROLE[,ROLE...] [DESCRIPTION] [-ttl DURATION] [-pools POOL,...]")
		}
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		secret := hex.EncodeToString(b)
		tok := &pb.Token{Name: rest[0], Roles: strings.Split(rest[1], ","), SecretSha256: strings.TrimPrefix(acl.Hash(secret), acl.HashPrefix)}
		if len(rest) == 3 {
			tok.Description = rest[2]
		}
		if pools != "" {
			tok.Pools = strings.Split(pools, ",")
		}
		req := &pb.CreateTokenRequest{Token: tok}
		if ttl > 0 {
			req.Ttl = durationpb.New(ttl)
		}
		resp, err := c.tokens.CreateToken(ctx, req)
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		fmt.Fprintf(c.out, "token %s (%s) created at index %d; its secret, shown only now:\n%s\n", resp.Token.Name, strings.Join(resp.Token.Roles, ","), resp.Index, secret)
		return nil
	case "list":
		if len(rest) != 0 {
			return usageError("token list: no arguments")
		}
		resp, err := c.tokens.ListTokens(ctx, &pb.ListTokensRequest{Consistent: true})
		if err != nil {
			return err
		}
		if c.json {
			return c.printJSON(resp)
		}
		w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tROLES\tPOOLS\tCREATED\tBY\tEXPIRES\tDESCRIPTION")
		for _, t := range resp.Tokens {
			expires := "-"
			if t.ExpireTime != nil {
				expires = t.ExpireTime.AsTime().UTC().Format(time.RFC3339)
				if !time.Now().Before(t.ExpireTime.AsTime()) {
					expires += " (expired)"
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, strings.Join(t.Roles, ","), orDash(strings.Join(t.Pools, ",")), t.CreateTime.AsTime().UTC().Format(time.RFC3339), orDash(t.CreatedBy), expires, t.Description)
		}
		return w.Flush()
	case "delete":
		if len(rest) != 1 {
			return usageError("token delete: want NAME")
		}
		if _, err := c.tokens.DeleteToken(ctx, &pb.DeleteTokenRequest{Name: rest[0]}); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "token %s deleted\n", rest[0])
		return nil
	}
	return usageError(fmt.Sprintf("token: unknown subcommand %q (want new, create, list or delete)", args[0]))
}
