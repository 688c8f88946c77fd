package endpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hostscale/hostscale/controller/internal/alerts"
	pb "github.com/hostscale/hostscale/proto/hostscale/v1"
)

// SilenceFromPB converts a stored silence.
func SilenceFromPB(s *pb.Silence) alerts.Silence {
	out := alerts.Silence{ID: s.GetId(), CreatedBy: s.GetCreatedBy(), Comment: s.GetComment()}
	for _, m := range s.GetMatchers() {
		out.Matchers = append(out.Matchers, alerts.Matcher{Name: m.GetName(), Value: m.GetValue(), IsEqual: m.GetIsEqual(), IsRegex: m.GetIsRegex()})
	}
	if s.GetStartsAt() != nil {
		out.StartsAt = s.StartsAt.AsTime()
	}
	if s.GetEndsAt() != nil {
		out.EndsAt = s.EndsAt.AsTime()
	}
	return out
}

// silenceID derives a silence's id from its request id, so that a retried
// request names the same silence.
func silenceID(requestID string) string {
	sum := sha256.Sum256([]byte("silence/" + requestID))
	return "s-" + hex.EncodeToString(sum[:8])
}

func (s *Alerts) CreateSilence(ctx context.Context, req *pb.CreateSilenceRequest) (*pb.CreateSilenceResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if req.Silence == nil {
		return nil, invalid("silence", "must be set")
	}
	sil := proto.Clone(req.Silence).(*pb.Silence)
	sil.Id = silenceID(id)
	if sil.StartsAt == nil {
		sil.StartsAt = timestamppb.New(time.Now())
	}
	for _, t := range []*timestamppb.Timestamp{sil.StartsAt, sil.EndsAt} {
		if t != nil && t.CheckValid() != nil {
			return nil, invalid("silence.ends_at", "not a valid time")
		}
	}
	if err := SilenceFromPB(sil).Validate(); err != nil {
		var fe *alerts.FieldError
		if errors.As(err, &fe) {
			return nil, invalid(fe.Field, "%v", fe.Err)
		}
		return nil, invalid("silence", "%v", err)
	}
	resp := &pb.CreateSilenceResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_PutSilence{PutSilence: &pb.PutSilenceCommand{Silence: sil}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Silence, resp.Index = sil, res.Index
	return resp, nil
}

func (s *Alerts) DeleteSilence(ctx context.Context, req *pb.DeleteSilenceRequest) (*pb.DeleteSilenceResponse, error) {
	id, err := requestID(req.RequestId)
	if err != nil {
		return nil, err
	}
	req.RequestId = id
	if err := checkName("silence", req.Silence); err != nil {
		return nil, err
	}
	resp := &pb.DeleteSilenceResponse{}
	res, fwd, err := s.Core.Write(ctx, req, resp, &pb.Command{
		RequestId: id,
		Command:   &pb.Command_DeleteSilence{DeleteSilence: &pb.DeleteSilenceCommand{Silence: req.Silence}},
	})
	if fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = res.Index
	return resp, nil
}

func (s *Alerts) ListSilences(ctx context.Context, req *pb.ListSilencesRequest) (*pb.ListSilencesResponse, error) {
	resp := &pb.ListSilencesResponse{}
	if fwd, err := s.Core.Consistent(ctx, req.Consistent, req, resp); fwd || err != nil {
		return orNil(resp, err)
	}
	resp.Index = s.Core.FSM.Read(func(st *pb.State) {
		for _, id := range slices.Sorted(maps.Keys(st.Silences)) {
			resp.Silences = append(resp.Silences, proto.Clone(st.Silences[id]).(*pb.Silence))
		}
	})
	return resp, nil
}
