package server

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
	"github.com/shortleaf/shortleaf/pkg/uds"
)

// openAuditLog opens the audit log (unless disabled) before the CA, so
// that the CA's first transitions are recorded; checkpoints are signed
// once the CA is up.
func (s *Server) openAuditLog() error {
	ac := s.cfg.Audit
	if ac.Disabled {
		s.cfg.Logger.Warn("the audit log is disabled: issuance and admin changes are not recorded")
		return nil
	}
	l, err := audit.Open(audit.Config{Dir: s.cfg.AuditDir(), Replica: s.cfg.ReplicaID, MaxFileSize: ac.MaxFileSize, MaxFileAge: ac.MaxFileAge,
		MaxTotalSize: ac.MaxTotalSize, MaxAge: ac.MaxAge, CheckpointInterval: ac.CheckpointInterval,
		Signer: checkpointSigner{s}, FileHeader: s.bundleRecord, Clock: s.cfg.Clock, Logger: s.cfg.Logger})
	if err != nil {
		return fmt.Errorf("server: audit: %w", err)
	}
	s.auditLog = l
	telemetry.WatchAudit(s.cfg.Registry, l.Stats, l.Queued)
	return nil
}

// AuditDir is where the audit log's files are: audit.dir, by default
// <data_dir>/audit.
func (cfg Config) AuditDir() string {
	if cfg.Audit.Dir != "" {
		return cfg.Audit.Dir
	}
	return filepath.Join(cfg.DataDir, auditDirName)
}

// auditor is the audit log as the APIs take it (nil when disabled).
func (s *Server) auditor() api.Auditor {
	if s.auditLog == nil {
		return nil
	}
	return s.auditLog
}

// auditTransition records a change of the CA's keys, automatic or forced.
func (s *Server) auditTransition(t ca.Transition) {
	if s.auditLog == nil {
		return
	}
	s.auditLog.Append(audit.Record{Time: t.At, Actor: audit.ActorServer, Action: audit.ActionCATransition, Object: t.AuthorityID,
		Result: audit.ResultOK, Details: map[string]string{"kind": string(t.Kind), "transition": t.What}})
}

// bundleRecord is the record of the trust bundle's roots: at the start of
// every audit file, and whenever the bundle changes. With it, a verifier
// that trusts a later root also trusts the checkpoints signed under the
// roots before it (see audit.Verify). False before the CA is loaded.
func (s *Server) bundleRecord() (audit.Record, bool) {
	authority := s.auditCA.Load()
	if authority == nil {
		return audit.Record{}, false
	}
	b, seq := authority.Bundle()
	roots := make([]string, 0, len(b.X509Authorities()))
	for _, c := range b.X509Authorities() {
		roots = append(roots, base64.StdEncoding.EncodeToString(c.Raw))
	}
	return audit.Record{Time: s.cfg.Clock.Now(), Actor: audit.ActorServer, Action: audit.ActionBundle, Object: strconv.FormatUint(seq, 10),
		Result: audit.ResultOK, Details: map[string]string{audit.DetailRoots: strings.Join(roots, " ")}}, true
}

// auditBundle records the bundle when its sequence number has changed since
// the last record (rotate loop only).
func (s *Server) auditBundle() {
	if s.auditLog == nil {
		return
	}
	if _, seq := s.ca.Bundle(); seq == s.auditedBundleSeq {
		return
	}
	if r, ok := s.bundleRecord(); ok {
		s.auditLog.Append(r)
		s.auditedBundleSeq, _ = strconv.ParseUint(r.Object, 10, 64)
	}
}

// checkpointSigner signs the audit log's checkpoints with the CA's active
// intermediate, once there is a CA.
type checkpointSigner struct{ s *Server }

func (c checkpointSigner) SignDetached(msg []byte) ([]byte, []*x509.Certificate, error) {
	authority := c.s.auditCA.Load()
	if authority == nil {
		return nil, nil, errors.New("the CA is not loaded yet")
	}
	return authority.SignDetached(msg)
}

// ready is the server's readiness: the CA can sign and the audit log writes.
func (s *Server) ready() error {
	if err := s.ca.CheckSigner(); err != nil {
		return err
	}
	if s.auditLog != nil {
		return s.auditLog.Healthy()
	}
	return nil
}

// userNames caches uid → user name lookups for admin actors.
var userNames sync.Map

// adminActor names the caller on the admin socket by its uid and user name.
func adminActor(ctx context.Context) string {
	c, ok := uds.PeerFromContext(ctx)
	if !ok {
		return "admin (peer unknown)"
	}
	uid := strconv.FormatUint(uint64(c.UID), 10)
	name, ok := userNames.Load(uid)
	if !ok {
		name = "?"
		if u, err := user.LookupId(uid); err == nil {
			name = u.Username
		}
		userNames.Store(uid, name)
	}
	return fmt.Sprintf("admin uid=%s user=%s", uid, name)
}
