package session

import (
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

func slicesSortTimes(ts []time.Time) {
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
}

func nums(ss []*pb.Sample) []uint32 {
	var out []uint32
	for _, s := range ss {
		out = append(out, s.GetProcesses())
	}
	return out
}

func TestBuffer_dropsOldestAndAcksPrefix(t *testing.T) {
	b := buffer{max: 3}
	for i := uint32(1); i <= 4; i++ {
		d := b.push(&pb.Sample{Processes: i})
		require.Equal(t, map[bool]int{true: 1, false: 0}[i == 4], d)
	}
	// 2, 3, 4 kept; ids 1, 2, 3.
	require.Equal(t, []uint32{2, 3}, nums(b.take(2, 1, 2)))
	require.True(t, b.items[0].s.GetLate(), "taken before the stream began")
	require.False(t, b.items[1].s.GetLate())
	require.Equal(t, []uint32{4}, nums(b.take(5, 2, 2)))
	require.Nil(t, b.take(5, 3, 2))

	// A drop while in flight, then the ack of both batches.
	b.push(&pb.Sample{Processes: 5})
	b.ack(2)
	require.Len(t, b.items, 1)
	require.Equal(t, uint32(5), b.items[0].s.GetProcesses())

	b.unsend()
	require.Equal(t, []uint32{5}, nums(b.take(5, 4, 0)))
	require.False(t, b.dropSent(3))
	require.True(t, b.dropSent(4))
	require.Empty(t, b.items)
}

// FuzzBuffer applies random operations and checks the buffer's
// invariants: bounded, ids increasing, sent samples a prefix, acks and
// drops only from the front.
func FuzzBuffer(f *testing.F) {
	f.Add(uint8(3), []byte{0, 0, 0, 0, 1, 2, 0, 3, 1, 4})
	f.Add(uint8(1), []byte{0, 1, 4, 0, 2})
	f.Fuzz(func(t *testing.T, max uint8, ops []byte) {
		b := buffer{max: int(max%16) + 1}
		var seq uint64
		pushed := uint32(0)
		for _, op := range ops {
			switch op % 5 {
			case 0:
				pushed++
				b.push(&pb.Sample{Processes: pushed})
			case 1:
				seq++
				b.take(int(op/5)%4+1, seq, uint64(op))
			case 2:
				b.ack(uint64(op/5) % (seq + 1))
			case 3:
				b.unsend()
			case 4:
				b.dropSent(uint64(op/5) % (seq + 1))
			}
			require.LessOrEqual(t, len(b.items), b.max)
			sent := true
			var last *entry
			for _, e := range b.items {
				if e.seq == 0 {
					sent = false
				} else {
					require.True(t, sent, "a sent sample after an unsent one")
				}
				if last != nil {
					require.Greater(t, e.id, last.id)
					require.Greater(t, e.s.GetProcesses(), last.s.GetProcesses())
					if e.seq != 0 {
						require.GreaterOrEqual(t, e.seq, last.seq)
					}
				}
				last = e
			}
		}
	})
}
