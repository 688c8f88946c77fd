package endpoint

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Promotion bounds: a member is caught up when its applied index is
// within MaxPromoteLag entries of the leader's commit index, its term is
// the leader's and it heard from the leader within MaxPromoteContact (or
// the heartbeat timeout, when longer: heartbeats come a tenth of it
// apart), as Consul's autopilot judges a server healthy (MaxTrailingLogs
// 250, LastContactThreshold 200ms).
const (
	MaxPromoteLag     = 250
	MaxPromoteContact = 500 * time.Millisecond
)

// Promoter is the leader loop that promotes the non-voters added as
// voters (MemberRecord.voter_pending) once each has been healthy and
// caught up for Stabilization without a break, as Consul's autopilot does
// with its servers: a new voter counts in the quorum at once, so one that
// is still far behind, or failing, would make the cluster lose a quorum
// sooner.
//
// A promoted member replaces a dead one, as the autopilot's dead server
// cleanup does: with more than three voters, a voter this node has not
// reached for DeadAfter (LastReached: its probes) is removed, so that the
// quorum no longer counts it. Only one goes per promotion, and never the
// leader or the member just promoted.
type Promoter struct {
	Core          *Core
	Stabilization time.Duration
	// MembershipTimeout bounds a promotion or a removal.
	MembershipTimeout time.Duration
	// Interval between checks.
	Interval time.Duration
	Logger   *slog.Logger
	// LastReached returns when this node last reached a member's API;
	// DeadAfter, when positive, is how long unreached makes a voter dead.
	LastReached func(id string) time.Time
	DeadAfter   time.Duration

	// healthy is, by member, since when every check found it healthy.
	healthy map[string]time.Time
	// why is, by member waiting for promotion, what the last check found.
	mu  sync.Mutex
	why map[string]string
	// started is when this leadership's loop began: a member never reached
	// since has been unreached since then at least.
	started time.Time
}

// Run checks every Interval until ctx ends.
func (p *Promoter) Run(ctx context.Context) error {
	p.healthy, p.started = map[string]time.Time{}, time.Now()
	p.mu.Lock()
	p.why = nil
	p.mu.Unlock()
	t := time.NewTicker(p.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		p.check(ctx, time.Now())
	}
}

func (p *Promoter) check(ctx context.Context, now time.Time) {
	r := p.Core.Raft
	cf := r.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	type candidate struct {
		srv raft.Server
		api string
	}
	var todo []candidate
	var clear []string
	p.Core.FSM.Read(func(st *pb.State) {
		for _, srv := range cf.Configuration().Servers {
			rec := st.Members[string(srv.ID)]
			if !rec.GetVoterPending() {
				continue
			}
			if srv.Suffrage == raft.Voter {
				clear = append(clear, string(srv.ID)) // promoted: the record is behind
				continue
			}
			todo = append(todo, candidate{srv, rec.GetApiAddress()})
		}
	})
	waiting := map[string]bool{}
	why := map[string]string{}
	defer func() {
		p.mu.Lock()
		p.why = why
		p.mu.Unlock()
	}()
	for _, c := range todo {
		id := string(c.srv.ID)
		waiting[id] = true
		if err := p.caughtUp(ctx, c.api); err != nil {
			if _, was := p.healthy[id]; was {
				p.Logger.Info("member not ready for promotion", "member", id, "err", err)
			}
			why[id] = err.Error()
			delete(p.healthy, id)
			continue
		}
		since, ok := p.healthy[id]
		if !ok {
			p.healthy[id] = now
			since = now
		}
		if now.Sub(since) < p.Stabilization {
			why[id] = fmt.Sprintf("healthy for %v of %v", now.Sub(since).Round(time.Second), p.Stabilization)
			continue
		}
		if err := r.AddVoter(c.srv.ID, c.srv.Address, 0, p.MembershipTimeout).Error(); err != nil {
			p.Logger.Warn("promote member", "member", id, "err", err)
			continue
		}
		p.Logger.Info("member promoted to voter", "member", id, "healthy_for", now.Sub(since).Round(time.Millisecond))
		delete(p.healthy, id)
		clear = append(clear, id)
		p.replaceDead(now, id)
	}
	for id := range p.healthy {
		if !waiting[id] {
			delete(p.healthy, id)
		}
	}
	for _, id := range clear {
		no := false
		if _, err := p.Core.Apply(&pb.Command{Command: &pb.Command_SetMember{SetMember: &pb.SetMemberCommand{
			Member: &pb.MemberRecord{Id: id}, VoterPending: &no,
		}}}); err != nil {
			p.Logger.Warn("record member promotion", "member", id, "err", err)
		}
	}
}

// Why says what the last check found of a member waiting for promotion:
// why it is not caught up, or how long it has been; empty when unknown.
func (p *Promoter) Why(id string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.why[id]
}

// replaceDead removes the voter dead the longest, when one has been for
// DeadAfter and more than three voters remain with promoted.
func (p *Promoter) replaceDead(now time.Time, promoted string) {
	if p.DeadAfter <= 0 || p.LastReached == nil {
		return
	}
	cf := p.Core.Raft.GetConfiguration()
	if cf.Error() != nil {
		return
	}
	voters := 0
	dead, deadFor := "", time.Duration(0)
	for _, srv := range cf.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		voters++
		id := string(srv.ID)
		if id == p.Core.ID || id == promoted {
			continue
		}
		if d := now.Sub(maxTime(p.LastReached(id), p.started)); d >= p.DeadAfter && d > deadFor {
			dead, deadFor = id, d
		}
	}
	if dead == "" || voters <= 3 {
		return
	}
	if _, err := removeMember(p.Core, "", dead, p.MembershipTimeout); err != nil {
		p.Logger.Warn("remove dead member", "member", dead, "err", err)
		return
	}
	p.Logger.Info("dead member removed, replaced by a promoted one", "member", dead, "unreached_for", deadFor.Round(time.Second), "replaced_by", promoted)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// caughtUp asks the member at api for its status and says why it is not
// caught up with this leader, or nil.
func (p *Promoter) caughtUp(ctx context.Context, api string) error {
	if api == "" {
		return fmt.Errorf("its API address is not known yet")
	}
	conn, err := p.Core.Conns.Get(api)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, p.Interval)
	defer cancel()
	st, err := pb.NewClusterServiceClient(conn).GetStatus(cctx, &pb.GetStatusRequest{})
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	r := p.Core.Raft
	switch term, commit := r.CurrentTerm(), r.CommitIndex(); {
	case st.Term != term:
		return fmt.Errorf("its term is %d, the leader's %d", st.Term, term)
	case st.Leader.GetId() != p.Core.ID:
		return fmt.Errorf("it follows %q", st.Leader.GetId())
	case st.LastContact == nil || st.LastContact.AsDuration() > max(MaxPromoteContact, r.ReloadableConfig().HeartbeatTimeout):
		return fmt.Errorf("it last heard from the leader %v ago", st.LastContact.AsDuration())
	case st.AppliedIndex+MaxPromoteLag < commit:
		return fmt.Errorf("it applied index %d, the leader committed %d", st.AppliedIndex, commit)
	}
	return nil
}
