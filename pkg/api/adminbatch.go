package api

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/datastore"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// MaxEntryBatch is the most entries one batch call may write.
const MaxEntryBatch = 1000

// BatchCreateEntry registers up to MaxEntryBatch entries in one datastore
// commit; each gets its own result.
func (s *AdminService) BatchCreateEntry(ctx context.Context, req *adminv1.BatchCreateEntryRequest) (*adminv1.BatchEntryResponse, error) {
	return s.batchEntries(ctx, "create", len(req.GetEntries()), func(i int) (datastore.EntryWrite, error) {
		e, err := entryFromProto(req.GetEntries()[i], s.cfg.CA.TrustDomain(), s.cfg.MaxSVIDTTL)
		if err != nil {
			return datastore.EntryWrite{}, err
		}
		e.ID = ""
		e.CreatedAt = s.cfg.Clock.Now()
		return datastore.EntryWrite{Create: e}, nil
	})
}

// BatchUpdateEntry replaces up to MaxEntryBatch entries in one commit.
func (s *AdminService) BatchUpdateEntry(ctx context.Context, req *adminv1.BatchUpdateEntryRequest) (*adminv1.BatchEntryResponse, error) {
	return s.batchEntries(ctx, "update", len(req.GetEntries()), func(i int) (datastore.EntryWrite, error) {
		in := req.GetEntries()[i]
		if in.GetId() == "" {
			return datastore.EntryWrite{}, invalid("entry.id", "is required")
		}
		e, err := entryFromProto(in, s.cfg.CA.TrustDomain(), s.cfg.MaxSVIDTTL)
		if err != nil {
			return datastore.EntryWrite{}, err
		}
		return datastore.EntryWrite{Update: e}, nil
	})
}

// BatchDeleteEntry removes up to MaxEntryBatch entries in one commit.
func (s *AdminService) BatchDeleteEntry(ctx context.Context, req *adminv1.BatchDeleteEntryRequest) (*adminv1.BatchEntryResponse, error) {
	return s.batchEntries(ctx, "delete", len(req.GetIds()), func(i int) (datastore.EntryWrite, error) {
		if req.GetIds()[i] == "" {
			return datastore.EntryWrite{}, invalid("id", "is required")
		}
		return datastore.EntryWrite{DeleteID: req.GetIds()[i]}, nil
	})
}

// batchEntries validates n requests (write(i) makes the i-th), writes the
// valid ones in one datastore call, and answers each in request order.
func (s *AdminService) batchEntries(ctx context.Context, verb string, n int, write func(i int) (datastore.EntryWrite, error)) (*adminv1.BatchEntryResponse, error) {
	field := "entries"
	if verb == "delete" {
		field = "ids"
	}
	switch {
	case n == 0:
		return nil, invalid(field, "is empty")
	case n > MaxEntryBatch:
		return nil, invalid(field, "has %d items, more than the limit of %d per call", n, MaxEntryBatch)
	}
	results := make([]*adminv1.BatchEntryResult, n)
	var writes []datastore.EntryWrite
	var index []int // writes[k] answers results[index[k]]
	for i := range n {
		w, err := write(i)
		if err != nil {
			results[i] = batchFailure(field, i, err)
			continue
		}
		writes = append(writes, w)
		index = append(index, i)
	}
	written := 0
	if len(writes) > 0 {
		out, err := s.cfg.Store.WriteEntries(ctx, writes)
		if err != nil {
			return nil, toStatus(ctx, s.cfg.Logger, verb+" entries", err)
		}
		for k, r := range out {
			i := index[k]
			if r.Err != nil {
				name := writes[k].DeleteID
				switch {
				case writes[k].Create != nil:
					name = writes[k].Create.SPIFFEID
				case writes[k].Update != nil:
					name = writes[k].Update.ID
				}
				results[i] = batchFailure(field, i, objectStatus(ctx, s.cfg.Logger, verb+" entry", "entry", name, r.Err))
				continue
			}
			written++
			results[i] = &adminv1.BatchEntryResult{Entry: entryToProto(r.Entry)}
		}
	}
	// One line per call, not per entry: a registration of 100k entries is
	// 100 lines.
	s.cfg.Logger.InfoContext(ctx, "entries "+verb+"d", slog.Int("requested", n), slog.Int("written", written), slog.Int("refused", n-written))
	return &adminv1.BatchEntryResponse{Results: results}, nil
}

// batchFailure is the result of a refused item; an invalid field is named
// with the item's place ("entries[3].spiffe_id: ...").
func batchFailure(field string, i int, err error) *adminv1.BatchEntryResult {
	st := status.Convert(err)
	msg := st.Message()
	place := fmt.Sprintf("%s[%d]", field, i)
	switch {
	case st.Code() == codes.InvalidArgument && strings.HasPrefix(msg, "entry."):
		msg = place + strings.TrimPrefix(msg, "entry")
	case st.Code() == codes.InvalidArgument && strings.HasPrefix(msg, "entry:"):
		msg = place + strings.TrimPrefix(msg, "entry")
	case st.Code() == codes.InvalidArgument && strings.HasPrefix(msg, "id:"):
		msg = place + strings.TrimPrefix(msg, "id")
	default:
		msg = place + ": " + msg
	}
	return &adminv1.BatchEntryResult{StatusCode: int32(st.Code()), StatusMessage: msg}
}
