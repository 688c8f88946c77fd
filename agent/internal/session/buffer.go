package session

import pb "github.com/hostscale/hostscale/proto/hostscale/v1"

// entry is one sample not yet acknowledged.
type entry struct {
	// id orders samples over the agent's life.
	id uint64
	s  *pb.Sample
	// seq is the batch the sample was sent in on the current stream, 0
	// while unsent.
	seq uint64
}

// buffer holds unacknowledged samples oldest first. The samples sent on
// the current stream are always a prefix: batches are cut from the oldest
// unsent samples, acknowledgements remove from the front and drops take
// the oldest. Not safe for concurrent use: Session guards it.
type buffer struct {
	max    int
	items  []*entry
	nextID uint64
}

// push appends s and reports how many old samples it dropped to stay
// within the bound.
func (b *buffer) push(s *pb.Sample) (dropped int) {
	for len(b.items) >= b.max {
		b.items[0] = nil
		b.items = b.items[1:]
		dropped++
	}
	b.items = append(b.items, &entry{id: b.nextID, s: s})
	b.nextID++
	return dropped
}

// dropSent drops the oldest sample if it was sent in batch seq.
func (b *buffer) dropSent(seq uint64) bool {
	if len(b.items) == 0 || b.items[0].seq != seq {
		return false
	}
	b.items[0] = nil
	b.items = b.items[1:]
	return true
}

// unsent returns the index of the oldest sample not sent on this stream.
func (b *buffer) unsent() int {
	i := 0
	for i < len(b.items) && b.items[i].seq != 0 {
		i++
	}
	return i
}

// take marks up to n of the oldest unsent samples as sent in batch seq and
// returns them. Samples taken before the stream began (id < lateBefore)
// are marked late.
func (b *buffer) take(n int, seq, lateBefore uint64) []*pb.Sample {
	i := b.unsent()
	end := min(i+n, len(b.items))
	if i == end {
		return nil
	}
	out := make([]*pb.Sample, 0, end-i)
	for _, e := range b.items[i:end] {
		e.seq = seq
		if e.id < lateBefore {
			e.s.Late = true
		}
		out = append(out, e.s)
	}
	return out
}

// ack forgets the samples sent in batches up to seq: acknowledgements on
// one stream arrive in order, so an Ack also covers any earlier batch.
func (b *buffer) ack(seq uint64) {
	for len(b.items) > 0 && b.items[0].seq != 0 && b.items[0].seq <= seq {
		b.items[0] = nil
		b.items = b.items[1:]
	}
}

// unsend marks every sample unsent again, as after a stream ends.
func (b *buffer) unsend() {
	for _, e := range b.items {
		e.seq = 0
	}
}

// dropInBatch drops the i-th sample sent in batch seq, if there is one.
func (b *buffer) dropInBatch(seq uint64, i int) bool {
	for j, e := range b.items {
		if e.seq == seq {
			if k := j + i; k < len(b.items) && b.items[k].seq == seq {
				b.items = append(b.items[:k], b.items[k+1:]...)
				return true
			}
			return false
		}
	}
	return false
}
