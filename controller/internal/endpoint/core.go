package endpoint

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/fsm"
	"github.com/hostscale/hostscale/internal/grpcx"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// ForwardedHeader marks a call a follower forwarded to the leader; a node
// that receives it and does not lead answers UNAVAILABLE instead of
// forwarding again, so calls never loop between nodes.
const ForwardedHeader = "x-hostscale-forwarded-by"

// MaxRequestIDLength bounds client-chosen request ids.
const MaxRequestIDLength = 128

// Core is what every handler shares: the Raft node, the state machine, and
// connections to the other controllers. All writes and consistent reads go
// through it.
type Core struct {
	ID      string
	APIAddr string
	Raft    *raft.Raft
	FSM     *fsm.FSM
	Conns   *grpcx.ConnPool
	// LeaderReady reports whether this node, as leader, has run its
	// Barrier and may serve consistent reads.
	LeaderReady func() bool
	// ApplyTimeout bounds the wait to enqueue a command.
	ApplyTimeout time.Duration
	// CommitHold bounds how long, under load, the next entry is held for
	// more commands (see the proposer); 0 never holds.
	CommitHold time.Duration
	Logger     *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
	// Forwarder carries forwarded unary calls to the leader.
	Forwarder *Forwarder
	// LogTrouble is how long this node's writes to its Raft log store
	// have been stuck or failing, and what it is (0 and "" while they go
	// through); nil when unknown.
	LogTrouble func() (time.Duration, string)

	proposerOnce sync.Once
	proposer     *proposer
	verifierOnce sync.Once
	verifier     *verifier
}

// LeaderAPI returns the leader's id and API address as this node knows
// them, or UNAVAILABLE when it knows no leader or not its address.
func (c *Core) LeaderAPI() (id, addr string, err error) {
	_, lid := c.Raft.LeaderWithID()
	if lid == "" {
		return "", "", status.Error(codes.Unavailable, "no leader is known; retry")
	}
	id = string(lid)
	if id == c.ID {
		return id, c.APIAddr, nil
	}
	c.FSM.Read(func(s *pb.State) {
		if m := s.Members[id]; m != nil {
			addr = m.ApiAddress
		}
	})
	if addr == "" {
		return id, "", status.Errorf(codes.Unavailable, "leader %s has not announced its API address yet; retry", id)
	}
	return id, addr, nil
}

// forwardedBy returns the node that forwarded the call in ctx, if any.
func forwardedBy(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(ForwardedHeader)) > 0 {
		return md.Get(ForwardedHeader)[0]
	}
	return ""
}

// LeaderConn returns a connection to the leader's API.
func (c *Core) LeaderConn(ctx context.Context) (*grpc.ClientConn, context.Context, error) {
	if by := forwardedBy(ctx); by != "" {
		return nil, nil, status.Errorf(codes.Unavailable, "forwarded by %s to %s, which does not lead; retry", by, c.ID)
	}
	_, addr, err := c.LeaderAPI()
	if err != nil {
		return nil, nil, err
	}
	conn, err := c.Conns.Get(addr)
	if err != nil {
		return nil, nil, status.Errorf(codes.Unavailable, "connect to leader: %v", err)
	}
	return conn, metadata.AppendToOutgoingContext(ctx, ForwardedHeader, c.ID), nil
}

// forward invokes the unary method being served in ctx on the leader, with
// req, and decodes the leader's answer into resp.
func (c *Core) forward(ctx context.Context, req, resp proto.Message) error {
	if by := forwardedBy(ctx); by != "" {
		return status.Errorf(codes.Unavailable, "forwarded by %s to %s, which does not lead; retry", by, c.ID)
	}
	method, ok := grpc.Method(ctx)
	if !ok {
		return status.Error(codes.Internal, "forward: no method in context")
	}
	raftAddr, lid := c.Raft.LeaderWithID()
	if lid == "" || raftAddr == "" {
		return status.Error(codes.Unavailable, "no leader is known; retry")
	}
	return c.Forwarder.Call(ctx, Leader{RaftAddr: string(raftAddr), APIAddr: func() (string, error) {
		_, addr, err := c.LeaderAPI()
		return addr, err
	}}, method, req, resp)
}

// IsLeader reports whether this node leads.
func (c *Core) IsLeader() bool { return c.Raft.State() == raft.Leader }

// LeaderOnly forwards the call to the leader unless this node leads. When
// it returns forwarded, resp holds the leader's answer (or err its error)
// and the handler returns at once; otherwise the handler runs here.
func (c *Core) LeaderOnly(ctx context.Context, req, resp proto.Message) (forwarded bool, err error) {
	if c.IsLeader() {
		return false, nil
	}
	return true, c.forward(ctx, req, resp)
}

// Write makes cmd take effect through Raft. On the leader it applies cmd and
// returns the state machine's result; elsewhere it forwards the call and
// reports forwarded, with resp holding the leader's answer.
func (c *Core) Write(ctx context.Context, req, resp proto.Message, cmd *pb.Command) (res *fsm.Result, forwarded bool, err error) {
	if fwd, err := c.LeaderOnly(ctx, req, resp); fwd {
		return nil, true, err
	}
	res, err = c.Apply(cmd)
	if err == errNotLeader {
		// Leadership moved between the check and the apply, and nothing
		// was written: the new leader can take it.
		return nil, true, c.forward(ctx, req, resp)
	}
	return res, false, err
}

// errNotLeader is Apply's answer when raft refused the command because this
// node does not lead: nothing was written.
var errNotLeader = status.Error(codes.Unavailable, "apply: this node is not the leader; retry")

// Apply proposes cmd on this node, which must lead, stamped with the
// current time, and waits until it is applied. Commands proposed together
// may share one Raft entry. The error is the command's own outcome or a
// raft failure mapped to a status.
func (c *Core) Apply(cmd *pb.Command) (*fsm.Result, error) {
	c.proposerOnce.Do(func() {
		c.proposer = &proposer{raft: c.Raft, timeout: c.ApplyTimeout, metrics: c.Metrics, holdMax: c.CommitHold}
	})
	cmd.Time = timestamppb.Now()
	return c.proposer.propose(cmd)
}

// Consistent prepares a read that asked to be consistent: it forwards the
// call to the leader (forwarded, resp filled), or, on the leader, confirms
// leadership with a quorum so the local state is current.
func (c *Core) Consistent(ctx context.Context, consistent bool, req, resp proto.Message) (forwarded bool, err error) {
	if !consistent {
		return false, nil
	}
	if fwd, err := c.LeaderOnly(ctx, req, resp); fwd {
		return true, err
	}
	if !c.LeaderReady() {
		return false, status.Error(codes.Unavailable, "the new leader is catching up; retry")
	}
	// The round commits an entry, which waits for the leader's own log
	// write: on a stalled disk, for as long as the stall. The read gives
	// up after VerifyTimeout, or with its caller.
	c.verifierOnce.Do(func() {
		c.verifier = &verifier{verify: func() error { return readRound(c.Raft) }}
	})
	return false, c.verifier.wait(ctx)
}

// requestID returns id, or a new unique one when it is empty; it rejects
// ids too long to remember.
func requestID(id string) (string, error) {
	if len(id) > MaxRequestIDLength {
		return "", invalid("request_id", "at most %d characters, got %d", MaxRequestIDLength, len(id))
	}
	if id != "" {
		return id, nil
	}
	return idPrefix + strconv.FormatUint(idCounter.Add(1), 36), nil
}

// Server-made request ids are a random per-process prefix and a counter:
// unique across nodes and restarts without a random read per request.
var (
	idPrefix  = newIDPrefix()
	idCounter atomic.Uint64
)

func newIDPrefix() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:]) + "-"
}
