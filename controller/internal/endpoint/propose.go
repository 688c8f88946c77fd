package endpoint

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hostscale/hostscale/controller/internal/fsm"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Group commit. While one entry proposed through Apply is on its way
// through Raft, the commands proposed after it wait, and leave together as
// one CommandBatch entry once it is applied. An idle leader proposes each
// command at once as an entry of its own; a busy one sends fewer, larger
// entries, so that Raft's per-entry work (encoding, replication, the log
// store, the state machine's decoding on every node) is shared by the
// commands of a batch, and the commands arriving during one log write all
// go with the next.
//
// Under a sustained load (an entry of at least holdMin commands), the
// next entry is held until as many commands wait as the last one held, or
// for at most holdFactor times the last entry's time in Raft and never
// more than the proposer's holdMax (-commit-hold): the callers just
// answered are then mostly back with their next command, which would
// otherwise miss the entry and wait for the one after it. One entry of
// many commands costs Raft and the cores less than two of half as many,
// and the answers and new calls of a batch no longer compete for the
// cores with the next entry's log writes: with 64 clients on two cores,
// writes per second rose by 6–30 % in alternated runs
// (docs/benchmarks.md). PostgreSQL's commit_delay and commit_siblings are
// the same idea.
const (
	// maxInflight is how many entries the proposer keeps in Raft at once.
	// One measured best on the write benchmark (docs/benchmarks.md): with
	// more, batches are smaller and the writes per second fewer.
	maxInflight = 1
	// maxBatchCommands and maxBatchBytes bound one batch entry; a command
	// larger than maxBatchBytes goes alone.
	maxBatchCommands = 1024
	maxBatchBytes    = 1 << 20

	holdMin    = 8
	holdFactor = 2
)

// applier proposes entries: *raft.Raft.
type applier interface {
	Apply(cmd []byte, timeout time.Duration) raft.ApplyFuture
}

type proposal struct {
	cmd   *pb.Command
	size  int
	start time.Time
	done  chan struct{}
	res   *fsm.Result
	err   error
}

// proposer batches the commands of concurrent Apply calls. Its zero value
// is not usable: Core builds it on first use.
type proposer struct {
	raft    applier
	timeout time.Duration
	metrics *Metrics

	mu       sync.Mutex
	queue    []*proposal
	inflight int
	// holdMax bounds a hold; zero never holds.
	holdMax time.Duration

	// While held, the inflight place is kept for the entry being held
	// until want commands wait or hold fires; holds counts them, so that
	// a hold's timer cannot release a later one.
	held  bool
	want  int
	hold  *time.Timer
	holds uint64
}

// propose proposes cmd and waits until it is applied.
func (p *proposer) propose(cmd *pb.Command) (*fsm.Result, error) {
	pr := &proposal{cmd: cmd, size: proto.Size(cmd), start: time.Now(), done: make(chan struct{})}
	p.mu.Lock()
	p.queue = append(p.queue, pr)
	send := p.inflight < maxInflight
	if send {
		p.inflight++
	} else if p.held && len(p.queue) >= p.want {
		// The held entry is full: this goroutine proposes it.
		p.held = false
		p.hold.Stop()
		p.metrics.heldEntry("filled")
		send = true
	}
	p.mu.Unlock()
	if send {
		// This goroutine waits for the entry itself, as a caller of
		// raft.Apply would: an idle leader adds no hop.
		if batch, f := p.send(); batch != nil {
			p.complete(batch, f, time.Now())
		}
	}
	<-pr.done
	return pr.res, pr.err
}

// send proposes what is queued as one entry, holding one of the inflight
// places; when nothing is queued it releases the place and returns nil.
func (p *proposer) send() ([]*proposal, raft.ApplyFuture) {
	p.mu.Lock()
	n, bytes := 0, 0
	for n < len(p.queue) && n < maxBatchCommands {
		bytes += p.queue[n].size
		if n > 0 && bytes > maxBatchBytes {
			break
		}
		n++
	}
	batch := p.queue[:n:n]
	p.queue = p.queue[n:]
	if n == 0 {
		p.queue = nil
		p.inflight--
		p.mu.Unlock()
		return nil, nil
	}
	p.mu.Unlock()

	var (
		data []byte
		err  error
	)
	if len(batch) == 1 {
		data, err = proto.Marshal(batch[0].cmd)
	} else {
		b := &pb.CommandBatch{Commands: make([]*pb.Command, len(batch))}
		for i, pr := range batch {
			b.Commands[i] = pr.cmd
		}
		data, err = proto.Marshal(&pb.Command{Command: &pb.Command_Batch{Batch: b}})
	}
	if err != nil {
		return batch, failedFuture{status.Errorf(codes.Internal, "encode command: %v", err)}
	}
	p.metrics.proposed(len(batch))
	return batch, p.raft.Apply(data, p.timeout)
}

// complete waits for a batch's entry, proposed at sent, and hands out its
// results; then it proposes the commands that queued meanwhile, or holds
// them (see holdMin), and leaves the wait for them to a new goroutine.
func (p *proposer) complete(batch []*proposal, f raft.ApplyFuture, sent time.Time) {
	err := f.Error()
	took := time.Since(sent)
	p.finish(batch, f.Response, err)
	if err == nil && p.holdNext(len(batch), took) {
		return
	}
	if next, nf := p.send(); next != nil {
		go p.complete(next, nf, time.Now())
	}
}

// holdNext holds the next entry after one of n commands that took took in
// Raft, when the load calls for it; it reports whether it did. The entry
// leaves when a proposal fills it or from release.
func (p *proposer) holdNext(n int, took time.Duration) bool {
	if n < holdMin || p.holdMax <= 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 || len(p.queue) >= n {
		return false
	}
	p.holds++
	p.held, p.want = true, n
	hold := p.holds
	p.hold = time.AfterFunc(min(holdFactor*took, p.holdMax), func() { p.release(hold) })
	return true
}

// release proposes the held entry with what waits when hold, its hold,
// ends.
func (p *proposer) release(hold uint64) {
	p.mu.Lock()
	if !p.held || p.holds != hold {
		// A proposal filled it first.
		p.mu.Unlock()
		return
	}
	p.held = false
	p.mu.Unlock()
	p.metrics.heldEntry("timed_out")
	if next, nf := p.send(); next != nil {
		p.complete(next, nf, time.Now())
	}
}

// failedFuture is the future of an entry that could not be proposed.
type failedFuture struct{ err error }

func (f failedFuture) Error() error  { return f.err }
func (f failedFuture) Index() uint64 { return 0 }
func (f failedFuture) Response() any { return nil }

// finish hands each proposal of a batch its result.
func (p *proposer) finish(batch []*proposal, response func() any, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
		if err == raft.ErrNotLeader {
			err = errNotLeader
		} else if _, ok := status.FromError(err); !ok {
			err = raftError("apply", err)
		}
	}
	var results []*fsm.Result
	if err == nil {
		switch r := response().(type) {
		case *fsm.Result:
			results = []*fsm.Result{r}
		case []*fsm.Result:
			results = r
		}
		if len(results) != len(batch) {
			err = status.Errorf(codes.Internal, "apply: unexpected response %T for %d commands", response(), len(batch))
		}
	}
	for i, pr := range batch {
		p.metrics.applied(pr.start, outcome)
		if err != nil {
			pr.err = err
		} else {
			pr.res, pr.err = results[i], results[i].Err
		}
		close(pr.done)
	}
}
