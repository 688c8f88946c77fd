package server

import (
	"time"

	"github.com/hostscale/hostscale/controller/internal/scheduler"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// Balancers acknowledge the table in force every balancerAckInterval (the
// balancer's default); one not heard from in balancerTTL is no longer
// waited for.
const (
	balancerAckInterval = 5 * time.Second
	balancerTTL         = 3 * balancerAckInterval
)

func (s *Server) schedulerLoop() *scheduler.Loop {
	return &scheduler.Loop{
		FSM: s.fsm,
		Live: func(node string) (bool, *pb.Sample) {
			_, latest := s.hub.Live(node)
			return s.hub.Connected(node), latest
		},
		Conditions: s.hub.Conditions,
		// A new leader knows every watching balancer once each had the
		// time to acknowledge again.
		Acked: func(index uint64, since time.Time) bool {
			now := time.Now()
			if now.Sub(since) < balancerAckInterval+time.Second {
				return false
			}
			return s.acks.AllAcked(index, now, balancerTTL)
		},
		AckChanged: s.acks.Changed,
		Apply: func(cmd *pb.Command) error {
			_, err := s.core.Apply(cmd)
			return err
		},
		Term: func() uint64 {
			_, term := s.leader.Context()
			return term
		},
		DrainDeadline: s.cfg.DrainDeadline,
		// Agents reconnect within a few hundred ms of a failover; a node
		// that does not within a heartbeat TTL is about to be marked down.
		Settle:   s.cfg.HeartbeatTTL,
		Interval: time.Second,
		Unplaced: &s.unplaced,
		Logger:   s.logger,
	}
}
