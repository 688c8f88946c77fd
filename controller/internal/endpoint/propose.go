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
const (
	// maxInflight is how many entries the proposer keeps in Raft at once.
	// One measured best on the write benchmark (docs/benchmarks.md): with
	// more, batches are smaller and the writes per second fewer.
	maxInflight = 1
	// maxBatchCommands and maxBatchBytes bound one batch entry; a command
	// larger than maxBatchBytes goes alone.
	maxBatchCommands = 1024
	maxBatchBytes    = 1 << 20
)

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
	raft    *raft.Raft
	timeout time.Duration
	metrics *Metrics

	mu       sync.Mutex
	queue    []*proposal
	inflight int
}

// propose proposes cmd and waits until it is applied.
func (p *proposer) propose(cmd *pb.Command) (*fsm.Result, error) {
	pr := &proposal{cmd: cmd, size: proto.Size(cmd), start: time.Now(), done: make(chan struct{})}
	p.mu.Lock()
	p.queue = append(p.queue, pr)
	send := p.inflight < maxInflight
	if send {
		p.inflight++
	}
	p.mu.Unlock()
	if send {
		// This goroutine waits for the entry itself, as a caller of
		// raft.Apply would: an idle leader adds no hop.
		if batch, f := p.send(); batch != nil {
			p.complete(batch, f)
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

// complete waits for a batch's entry and hands out its results; then it
// proposes the commands that queued meanwhile, and leaves the wait for
// them to a new goroutine.
func (p *proposer) complete(batch []*proposal, f raft.ApplyFuture) {
	err := f.Error()
	p.finish(batch, f.Response, err)
	if next, nf := p.send(); next != nil {
		go p.complete(next, nf)
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
