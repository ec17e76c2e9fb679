package api

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/clock"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// Auditor is where the agent and admin APIs record what they did;
// *audit.Log is one. Nil records nothing.
type Auditor interface {
	Append(r audit.Record) uint64
	Wait(ctx context.Context, ticket uint64) error
}

// auditTrail is an Auditor that may be nil.
type auditTrail struct {
	log   Auditor
	clock clock.Clock
}

// record queues r (stamped now unless it has a time) and returns its
// ticket; 0 without a log.
func (a auditTrail) record(r audit.Record) uint64 {
	if a.log == nil {
		return 0
	}
	if r.Time.IsZero() {
		r.Time = a.clock.Now()
	}
	return a.log.Append(r)
}

// wait returns once the record of ticket is durable: a certificate or token
// leaves the server only once its issuance is recorded.
func (a auditTrail) wait(ctx context.Context, ticket uint64) error {
	if a.log == nil || ticket == 0 {
		return nil
	}
	if err := a.log.Wait(ctx, ticket); err != nil {
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "the audit log could not record this issuance (%v); retry later", err)
	}
	return nil
}

// certRecord is the audit record of a signed certificate, chain leaf first.
func certRecord(actor, action, object string, chain []*x509.Certificate) audit.Record {
	leaf := chain[0]
	r := audit.Record{Actor: actor, Action: action, Object: object, Result: audit.ResultOK,
		Serial: leaf.SerialNumber.Text(16), SignerKeyID: hex.EncodeToString(leaf.AuthorityKeyId),
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}
	if len(leaf.URIs) == 1 {
		r.SPIFFEID = leaf.URIs[0].String()
	}
	return r
}

// jwtRecord is the audit record of a signed JWT-SVID: who and until when,
// signed by which key. The token itself is never recorded.
func jwtRecord(actor, object, spiffeID, token string, audience []string, issued, expires time.Time) audit.Record {
	return audit.Record{Actor: actor, Action: audit.ActionJWTSVIDIssue, Object: object, Result: audit.ResultOK,
		SPIFFEID: spiffeID, SignerKeyID: jwtKeyID(token), NotBefore: issued, NotAfter: expires,
		Details: map[string]string{"audience": strings.Join(audience, " ")}}
}

// jwtKeyID reads the kid of a token's header ("" if it has none).
func jwtKeyID(token string) string {
	header, _, _ := strings.Cut(token, ".")
	raw, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		return ""
	}
	var h struct {
		Kid string `json:"kid"`
	}
	_ = json.Unmarshal(raw, &h)
	return h.Kid
}

// refusalRecord is the record of a refused or failed request.
func refusalRecord(actor, action, object string, err error) audit.Record {
	st := status.Convert(err)
	return audit.Record{Actor: actor, Action: action, Object: object, Result: auditResult(st.Code()), Reason: truncate(st.Message(), 256)}
}

// auditResult classifies a status code as the audit log's result.
func auditResult(c codes.Code) string {
	switch c {
	case codes.OK:
		return audit.ResultOK
	case codes.PermissionDenied, codes.Unauthenticated:
		return audit.ResultDenied
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition, codes.OutOfRange:
		return audit.ResultInvalid
	}
	return audit.ResultError
}

// adminReadOnly are the admin methods that change nothing; every other admin
// call is an audit record (a successful Mint* is recorded by its handler,
// with the certificate).
var adminReadOnly = []string{"Get", "List", "Export", "Watch", "Fetch"}

// adminObjectFields name what an admin call acts on, first match wins,
// looked up in the response and then the request. A field holding a secret
// (the join token) is never among them.
var adminObjectFields = []protoreflect.Name{"id", "token_id", "spiffe_id", "trust_domain", "authority_id", "kind"}

// AdminAuditInterceptor records every admin call that changes something:
// the caller (actor gives it), the method, what it acted on and the result.
// It runs before the peer check, so refused callers are recorded too.
func AdminAuditInterceptor(log Auditor, clk clock.Clock, actor func(context.Context) string) grpc.UnaryServerInterceptor {
	trail := auditTrail{log: log, clock: clk}
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
		if log == nil || hasAnyPrefix(method, adminReadOnly) {
			return h(ctx, req)
		}
		resp, err := h(ctx, req)
		if err == nil && strings.HasPrefix(method, "Mint") {
			return resp, err // the handler recorded the certificate or token
		}
		r := audit.Record{Actor: actor(ctx), Action: "admin." + method, Result: audit.ResultOK}
		if err != nil {
			r = refusalRecord(r.Actor, r.Action, "", err)
		}
		if m, ok := resp.(proto.Message); ok && err == nil {
			r.Object = objectOf(m)
		}
		if r.Object == "" {
			if m, ok := req.(proto.Message); ok {
				r.Object = objectOf(m)
			}
		}
		if b, ok := resp.(*adminv1.BatchEntryResponse); ok && err == nil {
			r.Object, r.Details = batchSummary(b)
		}
		// The change is made; its record is waited for (admin calls are
		// rare) so that the caller's answer means it is on disk. A failed
		// wait does not undo the change: the log's failure is alarmed on
		// by itself.
		_ = trail.wait(ctx, trail.record(r))
		return resp, err
	}
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// objectOf is the first of adminObjectFields set in m (or in an entry it
// carries).
func objectOf(m proto.Message) string {
	msg := m.ProtoReflect()
	fields := msg.Descriptor().Fields()
	for _, name := range adminObjectFields {
		if fd := fields.ByName(name); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
			if v := msg.Get(fd).String(); v != "" {
				return v
			}
		}
	}
	if fd := fields.ByName("entry"); fd != nil && fd.Message() != nil && msg.Has(fd) {
		return objectOf(msg.Get(fd).Message().Interface())
	}
	return ""
}

// maxBatchIDs bounds the entry IDs one batch record lists.
const maxBatchIDs = 100

// batchSummary is the object and details of a batch entry call: how many
// were written and refused, and the IDs written.
func batchSummary(b *adminv1.BatchEntryResponse) (string, map[string]string) {
	var ids []string
	written := 0
	for _, r := range b.GetResults() {
		if r.GetStatusCode() == 0 {
			written++
			if len(ids) < maxBatchIDs {
				ids = append(ids, r.GetEntry().GetId())
			}
		}
	}
	d := map[string]string{"written": fmt.Sprint(written), "refused": fmt.Sprint(len(b.GetResults()) - written), "entry_ids": strings.Join(ids, " ")}
	return fmt.Sprintf("%d entries", len(b.GetResults())), d
}
