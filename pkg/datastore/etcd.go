package datastore

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// EtcdConfig says how to reach the etcd cluster and where in its key space
// shortleaf keeps its records.
type EtcdConfig struct {
	Endpoints []string
	// Prefix is put before every key, so that several trust domains (or
	// other programs) can share one cluster. It always ends with "/".
	Prefix string
	// CAFile, CertFile and KeyFile are PEM files for TLS to etcd; CAFile
	// alone verifies the server, the pair adds a client certificate.
	CAFile, CertFile, KeyFile string
	DialTimeout               time.Duration
	// LockTTL is the lease of a replica (see JoinCluster); default
	// ReplicaLeaseTTL. Whole seconds.
	LockTTL time.Duration
	// LockWait is how long a starting server waits for a previous process
	// of its replica ID to release it before refusing to start; default
	// LockTTL + 5s, time for a crashed process's lease to expire.
	LockWait time.Duration
	// RequestTimeout bounds each call made without a deadline of its own,
	// so an unreachable cluster fails calls instead of hanging them.
	RequestTimeout time.Duration
}

// DefaultEtcdPrefix is the key prefix when none is configured.
const DefaultEtcdPrefix = "/shortleaf/"

// Etcd is the datastore on an etcd cluster, for several server replicas
// sharing one trust domain. Every write that must be atomic is one etcd
// transaction whose comparisons make a concurrent writer (another replica)
// either fail cleanly or retry on the new state; none is lost.
type Etcd struct {
	client  *clientv3.Client
	ownsCli bool
	prefix  string
	timeout time.Duration
	lockTTL time.Duration
	// member is this process's place in the cluster (see JoinCluster); its
	// lease and leadership fence the CA journal writes.
	member atomic.Pointer[membership]
}

// maxConflictRetries bounds how often a read-compare-write is retried when
// another writer changed the record in between; each retry re-reads, so
// only a record rewritten continuously exhausts it.
const maxConflictRetries = 64

// OpenEtcd connects to the cluster and checks it answers within the dial
// timeout.
func OpenEtcd(ctx context.Context, cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("datastore: etcd: no endpoints")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	var tlsConfig *tls.Config
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		info := transport.TLSInfo{TrustedCAFile: cfg.CAFile, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}
		var err error
		if tlsConfig, err = info.ClientConfig(); err != nil {
			return nil, fmt.Errorf("datastore: etcd TLS: %w", err)
		}
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsConfig,
		Logger:      zap.NewNop(),
		Context:     context.WithoutCancel(ctx),
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: etcd: %w", err)
	}
	s := newEtcd(client, cfg)
	s.ownsCli = true
	// clientv3.New does not wait for a connection; one read proves the
	// cluster answers (and that TLS and auth work) before the server starts.
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := client.Get(pctx, s.prefix+"meta/ca_journal", clientv3.WithCountOnly()); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("datastore: etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return s, nil
}

func newEtcd(client *clientv3.Client, cfg EtcdConfig) *Etcd {
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	lockTTL := cfg.LockTTL.Truncate(time.Second)
	if lockTTL <= 0 {
		lockTTL = ReplicaLeaseTTL
	}
	return &Etcd{client: client, prefix: prefix, timeout: timeout, lockTTL: lockTTL}
}

// Close closes the client if OpenEtcd made it.
func (s *Etcd) Close() error {
	if s.ownsCli {
		return s.client.Close()
	}
	return nil
}

// Prefix is the key prefix, ending with "/".
func (s *Etcd) Prefix() string { return s.prefix }

func (s *Etcd) op(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// Keys. Entries are also stored whole under their parent, so that an agent's
// sync is one range read of its own entries.
func (s *Etcd) entryKey(id string) string { return s.prefix + "entries/" + id }
func (s *Etcd) byParentPrefix(parent string) string {
	return s.prefix + "entries_by_parent/" + parent + "\x00"
}
func (s *Etcd) byParentKey(parent, id string) string { return s.byParentPrefix(parent) + id }
func (s *Etcd) identityKey(e *Entry) string {
	sum := sha256.Sum256([]byte(e.identityKey()))
	return s.prefix + "entries_by_identity/" + hex.EncodeToString(sum[:])
}

// parentRevisionKey is rewritten by every change to parent's entries; its
// modification revision is the parent's entries revision.
func (s *Etcd) parentRevisionKey(parent string) string { return s.prefix + "parent_revision/" + parent }
func (s *Etcd) agentKey(id string) string              { return s.prefix + "agents/" + id }
func (s *Etcd) tokenKey(id string) string              { return s.prefix + "join_tokens/" + id }
func (s *Etcd) journalKey() string                     { return s.prefix + "meta/ca_journal" }
func (s *Etcd) federationKey(td string) string         { return s.prefix + "federations/" + td }
func (s *Etcd) federatedBundleKey(td string) string    { return s.prefix + "federated_bundles/" + td }

func mustJSON(v any) string {
	raw, err := json.Marshal(v)
	if err != nil {
		// Only the package's own record types are marshalled; they always encode.
		panic(fmt.Sprintf("datastore: encode %T: %v", v, err))
	}
	return string(raw)
}

// get reads one key: its value and modification revision (0 if absent).
func (s *Etcd) get(ctx context.Context, key string) ([]byte, int64, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	resp, err := s.client.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

func (s *Etcd) txn(ctx context.Context, cmps []clientv3.Cmp, then []clientv3.Op, els ...clientv3.Op) (*clientv3.TxnResponse, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	return s.client.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
}

func unchanged(key string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", rev)
}

func absent(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
}

func present(key string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
}

// CreateEntry stores a new entry and returns it with its ID set. An entry with
// the same SPIFFE ID, parent and selectors is ErrAlreadyExists.
func (s *Etcd) CreateEntry(ctx context.Context, e *Entry) (*Entry, error) {
	out := *e
	out.ID = newID()
	out.Revision = 1
	raw := mustJSON(&out)
	ident := s.identityKey(&out)
	resp, err := s.txn(ctx,
		[]clientv3.Cmp{absent(ident)},
		[]clientv3.Op{
			clientv3.OpPut(s.entryKey(out.ID), raw),
			clientv3.OpPut(s.byParentKey(out.ParentID, out.ID), raw),
			clientv3.OpPut(ident, out.ID),
			clientv3.OpPut(s.parentRevisionKey(out.ParentID), ""),
		},
		clientv3.OpGet(ident))
	if err != nil {
		return nil, fmt.Errorf("datastore: create entry: %w", err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("datastore: create entry: %w", &ExistsError{ID: firstValue(resp)})
	}
	return &out, nil
}

func firstValue(resp *clientv3.TxnResponse) string {
	for _, r := range resp.Responses {
		if rr := r.GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
			return string(rr.Kvs[0].Value)
		}
	}
	return ""
}

func (s *Etcd) getEntry(ctx context.Context, id string) (*Entry, int64, error) {
	return getRecord[Entry](ctx, s, s.entryKey(id), "entry "+id)
}

// getRecord reads and decodes the record at key and its revision;
// ErrNotFound if there is none.
func getRecord[T any](ctx context.Context, s *Etcd, key, what string) (*T, int64, error) {
	raw, rev, err := s.get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	if raw == nil {
		return nil, 0, ErrNotFound
	}
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, 0, fmt.Errorf("decode %s: %w", what, err)
	}
	return &v, rev, nil
}

// listRecords decodes every record under prefix, in key order.
func listRecords[T any](ctx context.Context, s *Etcd, prefix string) ([]*T, error) {
	var out []*T
	err := s.forEach(ctx, prefix, func(k, v []byte) error {
		if err := decodeInto(v, &out); err != nil {
			return fmt.Errorf("decode %s: %w", k, err)
		}
		return nil
	})
	return out, err
}

// GetEntry returns the entry with the given ID.
func (s *Etcd) GetEntry(ctx context.Context, id string) (*Entry, error) {
	e, _, err := s.getEntry(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("datastore: get entry: %w", err)
	}
	return e, nil
}

// UpdateEntry replaces the entry with e.ID, keeping its creation time and
// bumping its revision. The write compares the entry's and the new
// identity's revisions with what was read: a concurrent change makes it
// re-read and apply again, never leave an index pointing at a stale copy.
func (s *Etcd) UpdateEntry(ctx context.Context, e *Entry) (*Entry, error) {
	for range maxConflictRetries {
		old, rev, err := s.getEntry(ctx, e.ID)
		if err != nil {
			return nil, fmt.Errorf("datastore: update entry: %w", err)
		}
		out := *e
		out.CreatedAt = old.CreatedAt
		out.Revision = old.Revision + 1
		newIdent, oldIdent := s.identityKey(&out), s.identityKey(old)
		holder, identRev, err := s.get(ctx, newIdent)
		if err != nil {
			return nil, fmt.Errorf("datastore: update entry: %w", err)
		}
		if holder != nil && string(holder) != out.ID {
			return nil, fmt.Errorf("datastore: update entry: %w", &ExistsError{ID: string(holder)})
		}
		raw := mustJSON(&out)
		ops := []clientv3.Op{clientv3.OpPut(s.entryKey(out.ID), raw), clientv3.OpPut(newIdent, out.ID)}
		if oldIdent != newIdent {
			ops = append(ops, clientv3.OpDelete(oldIdent))
		}
		if old.ParentID != out.ParentID {
			ops = append(ops, clientv3.OpDelete(s.byParentKey(old.ParentID, old.ID)), clientv3.OpPut(s.parentRevisionKey(old.ParentID), ""))
		}
		ops = append(ops, clientv3.OpPut(s.byParentKey(out.ParentID, out.ID), raw), clientv3.OpPut(s.parentRevisionKey(out.ParentID), ""))
		resp, err := s.txn(ctx, []clientv3.Cmp{unchanged(s.entryKey(e.ID), rev), unchanged(newIdent, identRev)}, ops)
		if err != nil {
			return nil, fmt.Errorf("datastore: update entry: %w", err)
		}
		if resp.Succeeded {
			return &out, nil
		}
	}
	return nil, fmt.Errorf("datastore: update entry: %w", ErrChanged)
}

// DeleteEntry removes an entry.
func (s *Etcd) DeleteEntry(ctx context.Context, id string) error {
	for range maxConflictRetries {
		old, rev, err := s.getEntry(ctx, id)
		if err != nil {
			return fmt.Errorf("datastore: delete entry: %w", err)
		}
		resp, err := s.txn(ctx, []clientv3.Cmp{unchanged(s.entryKey(id), rev)}, []clientv3.Op{
			clientv3.OpDelete(s.entryKey(id)),
			clientv3.OpDelete(s.identityKey(old)),
			clientv3.OpDelete(s.byParentKey(old.ParentID, id)),
			clientv3.OpPut(s.parentRevisionKey(old.ParentID), ""),
		})
		if err != nil {
			return fmt.Errorf("datastore: delete entry: %w", err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("datastore: delete entry: %w", ErrChanged)
}

// listPage reads up to pageSize values of the keys after start and below
// end, in key order, and whether more follow.
func (s *Etcd) listPage(ctx context.Context, start, end string, pageSize int) ([][]byte, bool, error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	resp, err := s.client.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(int64(pageSize)))
	if err != nil {
		return nil, false, err
	}
	out := make([][]byte, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = kv.Value
	}
	return out, resp.More, nil
}

func decodeEntries(raws [][]byte) ([]*Entry, error) {
	out := make([]*Entry, 0, len(raws))
	for _, raw := range raws {
		var e Entry
		if err := json.Unmarshal(raw, &e); err != nil {
			return nil, fmt.Errorf("decode entry: %w", err)
		}
		out = append(out, &e)
	}
	return out, nil
}

// ListEntries returns up to pageSize entries in ID order after pageToken (the
// last ID of the previous page), and the token of the next page ("" at the end).
func (s *Etcd) ListEntries(ctx context.Context, pageToken string, pageSize int) ([]*Entry, string, error) {
	if pageSize <= 0 {
		pageSize = 1000
	}
	start := s.entryKey("")
	if pageToken != "" {
		start = s.entryKey(pageToken + "\x00")
	}
	return s.listEntries(ctx, "list entries", start, clientv3.GetPrefixRangeEnd(s.entryKey("")), pageSize)
}

func (s *Etcd) listEntries(ctx context.Context, op, start, end string, pageSize int) ([]*Entry, string, error) {
	raws, more, err := s.listPage(ctx, start, end, pageSize)
	if err == nil {
		var out []*Entry
		if out, err = decodeEntries(raws); err == nil {
			next := ""
			if more && len(out) > 0 {
				next = out[len(out)-1].ID
			}
			return out, next, nil
		}
	}
	return nil, "", fmt.Errorf("datastore: %s: %w", op, err)
}

// ListEntriesByParent returns up to pageSize of the entries parented to
// parentID, after the entry ID pageToken, and the next page's token.
func (s *Etcd) ListEntriesByParent(ctx context.Context, parentID, pageToken string, pageSize int) ([]*Entry, string, error) {
	if pageSize <= 0 {
		pageSize = 1000
	}
	prefix := s.byParentPrefix(parentID)
	start := prefix
	if pageToken != "" {
		start = s.byParentKey(parentID, pageToken+"\x00")
	}
	return s.listEntries(ctx, "list entries by parent", start, clientv3.GetPrefixRangeEnd(prefix), pageSize)
}

// EntriesRevision returns the store-wide revision and the revision of the
// last change to parentID's entries, read at one revision of the cluster.
func (s *Etcd) EntriesRevision(ctx context.Context, parentID string) (current, parent uint64, err error) {
	ctx, cancel := s.op(ctx)
	defer cancel()
	resp, err := s.client.Get(ctx, s.parentRevisionKey(parentID))
	if err != nil {
		return 0, 0, fmt.Errorf("datastore: entries revision: %w", err)
	}
	current = uint64(resp.Header.Revision)
	if len(resp.Kvs) > 0 {
		parent = uint64(resp.Kvs[0].ModRevision)
	}
	return current, parent, nil
}

// CreateJoinToken stores a join token (its hash only).
func (s *Etcd) CreateJoinToken(ctx context.Context, t *JoinToken) error {
	key := s.tokenKey(t.ID)
	resp, err := s.txn(ctx, []clientv3.Cmp{absent(key)}, []clientv3.Op{clientv3.OpPut(key, mustJSON(t))})
	if err == nil && !resp.Succeeded {
		err = ErrAlreadyExists
	}
	return wrapErr("create join token", err)
}

// PurgeExpiredJoinTokens deletes the join tokens that expired before now and
// returns how many. Each deletion compares the token's revision, so a token
// consumed meanwhile is not counted twice.
func (s *Etcd) PurgeExpiredJoinTokens(ctx context.Context, now time.Time) (int, error) {
	n := 0
	start, end := s.tokenKey(""), clientv3.GetPrefixRangeEnd(s.tokenKey(""))
	for {
		rctx, cancel := s.op(ctx)
		resp, err := s.client.Get(rctx, start, clientv3.WithRange(end), clientv3.WithLimit(500))
		cancel()
		if err != nil {
			return n, wrapErr("purge join tokens", err)
		}
		var cmps []clientv3.Cmp
		var dels []clientv3.Op
		for _, kv := range resp.Kvs {
			var t JoinToken
			if err := json.Unmarshal(kv.Value, &t); err != nil {
				return n, wrapErr("purge join tokens", fmt.Errorf("decode join token %s: %w", kv.Key, err))
			}
			if !now.Before(t.ExpiresAt) {
				cmps = append(cmps, unchanged(string(kv.Key), kv.ModRevision))
				dels = append(dels, clientv3.OpDelete(string(kv.Key)))
			}
		}
		// Delete one at a time within a batch's read: a batch transaction
		// would fail whole if any one token was consumed meanwhile.
		for i := range dels {
			tr, err := s.txn(ctx, cmps[i:i+1], dels[i:i+1])
			if err != nil {
				return n, wrapErr("purge join tokens", err)
			}
			if tr.Succeeded {
				n++
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return n, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// AttestJoinToken consumes the join token tokenID if secretHash matches and it
// has not expired at now, and records agent, in one transaction that compares
// the token's revision: of replicas racing with one token exactly one wins.
func (s *Etcd) AttestJoinToken(ctx context.Context, tokenID string, secretHash []byte, now time.Time, agent *Agent) error {
	key := s.tokenKey(tokenID)
	raw, rev, err := s.get(ctx, key)
	if err != nil {
		return wrapErr("attest join token", err)
	}
	if raw == nil {
		return wrapErr("attest join token", ErrTokenInvalid)
	}
	var t JoinToken
	if err := json.Unmarshal(raw, &t); err != nil {
		return wrapErr("attest join token", fmt.Errorf("decode join token: %w", err))
	}
	if subtle.ConstantTimeCompare(t.SecretHash, secretHash) != 1 {
		return wrapErr("attest join token", ErrTokenInvalid)
	}
	if !now.Before(t.ExpiresAt) {
		// Expired: deleted all the same, by whichever caller gets there.
		if _, err := s.txn(ctx, []clientv3.Cmp{unchanged(key, rev)}, []clientv3.Op{clientv3.OpDelete(key)}); err != nil {
			return wrapErr("attest join token", err)
		}
		return wrapErr("attest join token", ErrTokenExpired)
	}
	akey := s.agentKey(agent.SPIFFEID)
	resp, err := s.txn(ctx,
		[]clientv3.Cmp{unchanged(key, rev), absent(akey)},
		[]clientv3.Op{clientv3.OpDelete(key), clientv3.OpPut(akey, mustJSON(agent))},
		clientv3.OpGet(key, clientv3.WithCountOnly()))
	if err != nil {
		return wrapErr("attest join token", err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().GetCount() == 0 {
			return wrapErr("attest join token", ErrTokenInvalid) // another replica used it
		}
		return wrapErr("attest join token", ErrAlreadyExists)
	}
	return nil
}

func (s *Etcd) getAgent(ctx context.Context, id string) (*Agent, int64, error) {
	return getRecord[Agent](ctx, s, s.agentKey(id), "agent "+id)
}

// GetAgent returns the agent with the given SPIFFE ID.
func (s *Etcd) GetAgent(ctx context.Context, spiffeID string) (*Agent, error) {
	a, _, err := s.getAgent(ctx, spiffeID)
	if err != nil {
		return nil, fmt.Errorf("datastore: get agent: %w", err)
	}
	return a, nil
}

// UpdateAgent applies change to the stored agent and writes the result if
// the record did not change meanwhile, else reads it again and re-applies:
// two replicas serving one agent (a renewal on one, a sync on the other)
// never undo each other's fields. A missing agent is ErrNotFound, so an
// evicted agent is never recreated by a late renewal.
func (s *Etcd) UpdateAgent(ctx context.Context, spiffeID string, change func(*Agent) error) (*Agent, error) {
	key := s.agentKey(spiffeID)
	for range maxConflictRetries {
		a, rev, err := s.getAgent(ctx, spiffeID)
		if err != nil {
			return nil, fmt.Errorf("datastore: update agent: %w", err)
		}
		if err := change(a); err != nil {
			return nil, fmt.Errorf("datastore: update agent: %w", err)
		}
		a.SPIFFEID = spiffeID
		resp, err := s.txn(ctx, []clientv3.Cmp{unchanged(key, rev)}, []clientv3.Op{clientv3.OpPut(key, mustJSON(a))})
		if err != nil {
			return nil, fmt.Errorf("datastore: update agent: %w", err)
		}
		if resp.Succeeded {
			return a, nil
		}
	}
	return nil, fmt.Errorf("datastore: update agent: %w", ErrChanged)
}

// AttestAgent records an attested agent; see Bolt.AttestAgent.
func (s *Etcd) AttestAgent(ctx context.Context, agent *Agent) (*Agent, error) {
	key := s.agentKey(agent.SPIFFEID)
	for range maxConflictRetries {
		old, rev, err := s.getAgent(ctx, agent.SPIFFEID)
		cmp := unchanged(key, rev)
		switch {
		case errors.Is(err, ErrNotFound):
			old, cmp = nil, absent(key)
		case err != nil:
			return nil, wrapErr("attest agent", err)
		}
		a, err := reattested(old, agent)
		if err != nil {
			return nil, wrapErr("attest agent", err)
		}
		resp, err := s.txn(ctx, []clientv3.Cmp{cmp}, []clientv3.Op{clientv3.OpPut(key, mustJSON(a))})
		if err != nil {
			return nil, wrapErr("attest agent", err)
		}
		if resp.Succeeded {
			return a, nil
		}
	}
	return nil, wrapErr("attest agent", ErrChanged)
}

// ListAgents returns every agent in SPIFFE ID order.
func (s *Etcd) ListAgents(ctx context.Context) ([]*Agent, error) {
	out, err := listRecords[Agent](ctx, s, s.agentKey(""))
	return out, wrapErr("list agents", err)
}

// forEach calls fn for every key under prefix, in key order, reading pages
// so a large set never becomes one huge response.
func (s *Etcd) forEach(ctx context.Context, prefix string, fn func(k, v []byte) error, opts ...clientv3.OpOption) error {
	start, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		rctx, cancel := s.op(ctx)
		resp, err := s.client.Get(rctx, start, append([]clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(1000)}, opts...)...)
		cancel()
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv.Key, kv.Value); err != nil {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// deleteExisting deletes keys in one transaction if the first exists.
func (s *Etcd) deleteExisting(ctx context.Context, op string, keys ...string) error {
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpDelete(k)
	}
	resp, err := s.txn(ctx, []clientv3.Cmp{present(keys[0])}, ops)
	if err == nil && !resp.Succeeded {
		err = ErrNotFound
	}
	return wrapErr(op, err)
}

// DeleteAgent removes (evicts) an agent.
func (s *Etcd) DeleteAgent(ctx context.Context, spiffeID string) error {
	return s.deleteExisting(ctx, "delete agent", s.agentKey(spiffeID))
}

// PutFederation creates or replaces a relationship; with create set an
// existing one is ErrAlreadyExists.
func (s *Etcd) PutFederation(ctx context.Context, f *Federation, create bool) error {
	key := s.federationKey(f.TrustDomain)
	cmp, refusal := present(key), ErrNotFound
	if create {
		cmp, refusal = absent(key), ErrAlreadyExists
	}
	resp, err := s.txn(ctx, []clientv3.Cmp{cmp}, []clientv3.Op{clientv3.OpPut(key, mustJSON(f))})
	if err == nil && !resp.Succeeded {
		err = refusal
	}
	return wrapErr("put federation", err)
}

func (s *Etcd) getFederation(ctx context.Context, td string) (*Federation, int64, error) {
	return getRecord[Federation](ctx, s, s.federationKey(td), "federation "+td)
}

// GetFederation returns the relationship with td.
func (s *Etcd) GetFederation(ctx context.Context, td string) (*Federation, error) {
	f, _, err := s.getFederation(ctx, td)
	if err != nil {
		return nil, fmt.Errorf("datastore: get federation: %w", err)
	}
	return f, nil
}

// ListFederations returns every relationship.
func (s *Etcd) ListFederations(ctx context.Context) ([]*Federation, error) {
	out, err := listRecords[Federation](ctx, s, s.federationKey(""))
	return out, wrapErr("list federations", err)
}

// DeleteFederation removes a relationship and its bundle.
func (s *Etcd) DeleteFederation(ctx context.Context, td string) error {
	return s.deleteExisting(ctx, "delete federation", s.federationKey(td), s.federatedBundleKey(td))
}

// RecordFederationRefresh records the outcome of a fetch made with the
// relationship read, in one transaction that compares the record's revision:
// if its settings changed since read was taken, nothing is written and
// ErrChanged returned; if only another refresh's status was written
// meanwhile, the outcome is applied to the new record.
func (s *Etcd) RecordFederationRefresh(ctx context.Context, read *Federation, bundle []byte, at time.Time, fetchErr string) error {
	key := s.federationKey(read.TrustDomain)
	for range maxConflictRetries {
		cur, rev, err := s.getFederation(ctx, read.TrustDomain)
		if err != nil {
			return wrapErr("record federation refresh", err)
		}
		if !sameFederationSettings(cur, read) {
			return wrapErr("record federation refresh", ErrChanged)
		}
		if fetchErr == "" {
			cur.LastRefresh = at
		}
		cur.LastError = fetchErr
		ops := []clientv3.Op{clientv3.OpPut(key, mustJSON(cur))}
		if bundle != nil {
			ops = append(ops, clientv3.OpPut(s.federatedBundleKey(read.TrustDomain), string(bundle)))
		}
		resp, err := s.txn(ctx, []clientv3.Cmp{unchanged(key, rev)}, ops)
		if err != nil {
			return wrapErr("record federation refresh", err)
		}
		if resp.Succeeded {
			return nil
		}
	}
	return wrapErr("record federation refresh", ErrChanged)
}

// SetFederatedBundle stores the latest good bundle of td.
func (s *Etcd) SetFederatedBundle(ctx context.Context, td string, raw []byte) error {
	ctx, cancel := s.op(ctx)
	defer cancel()
	_, err := s.client.Put(ctx, s.federatedBundleKey(td), string(raw))
	return wrapErr("set federated bundle", err)
}

// GetFederatedBundle returns the stored bundle of td, ErrNotFound if none.
func (s *Etcd) GetFederatedBundle(ctx context.Context, td string) ([]byte, error) {
	raw, _, err := s.get(ctx, s.federatedBundleKey(td))
	if err == nil && raw == nil {
		err = ErrNotFound
	}
	if err != nil {
		return nil, wrapErr("get federated bundle", err)
	}
	return raw, nil
}

// ListFederatedBundles returns every stored foreign bundle.
func (s *Etcd) ListFederatedBundles(ctx context.Context) ([]FederatedBundle, error) {
	var out []FederatedBundle
	prefix := s.federatedBundleKey("")
	err := s.forEach(ctx, prefix, func(k, v []byte) error {
		out = append(out, FederatedBundle{TrustDomain: string(k[len(prefix):]), Raw: v})
		return nil
	})
	if err != nil {
		return nil, wrapErr("list federated bundles", err)
	}
	return out, nil
}

// DeleteFederatedBundle removes a stored foreign bundle.
func (s *Etcd) DeleteFederatedBundle(ctx context.Context, td string) error {
	return s.deleteExisting(ctx, "delete federated bundle", s.federatedBundleKey(td))
}

// lastSeenBatch is how many agents one RecordLastSeen transaction covers:
// a read and a compare plus a write for each stays under etcd's default
// limit of 128 operations per transaction.
const lastSeenBatch = 60

// RecordLastSeen raises the LastSeen of each listed agent to the time given
// (never lowers it); agents no longer stored (evicted) are skipped. Agents
// are written in transactions of lastSeenBatch, each comparing the
// revisions it read, so a concurrent change (a renewal on another replica)
// is never undone: the batch is read and applied again.
func (s *Etcd) RecordLastSeen(ctx context.Context, seen map[string]time.Time) (int, error) {
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	written := 0
	for len(ids) > 0 {
		batch := ids[:min(lastSeenBatch, len(ids))]
		ids = ids[len(batch):]
		n, err := s.recordLastSeenBatch(ctx, batch, seen)
		if err != nil {
			return written, wrapErr("record last seen", err)
		}
		written += n
	}
	return written, nil
}

func (s *Etcd) recordLastSeenBatch(ctx context.Context, ids []string, seen map[string]time.Time) (int, error) {
	reads := make([]clientv3.Op, len(ids))
	for i, id := range ids {
		reads[i] = clientv3.OpGet(s.agentKey(id))
	}
	for range maxConflictRetries {
		resp, err := s.txn(ctx, nil, reads)
		if err != nil {
			return 0, err
		}
		var cmps []clientv3.Cmp
		var puts []clientv3.Op
		for i, r := range resp.Responses {
			kvs := r.GetResponseRange().GetKvs()
			if len(kvs) == 0 {
				continue // evicted
			}
			var a Agent
			if err := json.Unmarshal(kvs[0].Value, &a); err != nil {
				return 0, fmt.Errorf("decode agent %s: %w", ids[i], err)
			}
			if at := seen[ids[i]]; at.After(a.LastSeen) {
				a.LastSeen = at
				key := s.agentKey(ids[i])
				cmps = append(cmps, unchanged(key, kvs[0].ModRevision))
				puts = append(puts, clientv3.OpPut(key, mustJSON(&a)))
			}
		}
		if len(puts) == 0 {
			return 0, nil
		}
		w, err := s.txn(ctx, cmps, puts)
		if err != nil {
			return 0, err
		}
		if w.Succeeded {
			return len(puts), nil
		}
	}
	return 0, ErrChanged
}

// WriteEntries applies a batch of entry writes, each its own etcd
// transaction. Unlike the bbolt store, a failure of etcd itself fails only
// the writes it hit: each result says whether its write was made. A batch
// of creates of distinct identities, or of deletes of distinct entries, is
// written up to 16 at a time (etcd commits concurrent transactions
// together); any other batch in order, so a later write sees an earlier one.
func (s *Etcd) WriteEntries(ctx context.Context, writes []EntryWrite) ([]EntryWriteResult, error) {
	results := make([]EntryWriteResult, len(writes))
	apply := func(i int) {
		w := writes[i]
		switch {
		case w.Create != nil:
			results[i].Entry, results[i].Err = s.CreateEntry(ctx, w.Create)
		case w.Update != nil:
			results[i].Entry, results[i].Err = s.UpdateEntry(ctx, w.Update)
		default:
			var old *Entry
			if old, results[i].Err = s.GetEntry(ctx, w.DeleteID); results[i].Err == nil {
				results[i].Err = s.DeleteEntry(ctx, w.DeleteID)
				results[i].Entry = old
			}
		}
	}
	if !independentWrites(writes) {
		for i := range writes {
			apply(i)
		}
		return results, nil
	}
	var g errgroup.Group
	g.SetLimit(16)
	for i := range writes {
		g.Go(func() error { apply(i); return nil })
	}
	_ = g.Wait()
	return results, nil
}

// independentWrites reports whether no write of the batch can change the
// outcome of another: all creates of distinct identities, or all deletes
// of distinct entries.
func independentWrites(writes []EntryWrite) bool {
	seen := make(map[string]bool, len(writes))
	creates := len(writes) > 0 && writes[0].Create != nil
	for _, w := range writes {
		var key string
		switch {
		case w.Update != nil:
			return false
		case w.Create != nil && creates:
			key = w.Create.identityKey()
		case w.Create == nil && !creates:
			key = w.DeleteID
		default:
			return false
		}
		if seen[key] {
			return false
		}
		seen[key] = true
	}
	return true
}
