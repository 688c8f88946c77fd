package fsm

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// BenchmarkFSM_ApplyBatch applies entries of 16 commands, as group commit
// makes them under 64 writers: each of 64 pools created, then deleted, in
// turn, with a request id each. It reports the cost per command.
func BenchmarkFSM_ApplyBatch(b *testing.B) {
	const pools, perEntry = 64, 16
	f := New(nil)
	var entries [][]byte
	seq := 0
	for range 2 * pools / perEntry {
		batch := &pb.CommandBatch{}
		for range perEntry {
			name := fmt.Sprintf("bench-%d", seq%pools)
			c := &pb.Command{Time: timestamppb.New(time.Unix(0, 0))}
			if (seq/pools)%2 == 0 {
				c.Command = &pb.Command_CreatePool{CreatePool: &pb.CreatePoolCommand{Pool: &pb.Pool{
					Name: name, PathPrefix: "/" + name, Backends: []*pb.Backend{{Address: "10.0.0.1:8080"}}}}}
			} else {
				c.Command = &pb.Command_DeletePool{DeletePool: &pb.DeletePoolCommand{Pool: name}}
			}
			batch.Commands = append(batch.Commands, c)
			seq++
		}
		data, err := proto.Marshal(&pb.Command{Command: &pb.Command_Batch{Batch: batch}})
		if err != nil {
			b.Fatal(err)
		}
		entries = append(entries, data)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		// Fresh request ids each round, so none is a repeat.
		data := entries[i%len(entries)]
		cmd := new(pb.Command)
		_ = proto.Unmarshal(data, cmd)
		for j, c := range cmd.GetBatch().Commands {
			c.RequestId = fmt.Sprintf("r%d-%d", i, j)
			c.Time = timestamppb.New(time.Unix(int64(i), 0))
		}
		data, _ = proto.Marshal(cmd)
		b.StartTimer()
		f.Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: data})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*perEntry), "ns/command")
}
