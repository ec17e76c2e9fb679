package datastore

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CreateJoinToken stores a join token (its hash only).
func (s *Bolt) CreateJoinToken(_ context.Context, t *JoinToken) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		if b.Get([]byte(t.ID)) != nil {
			return ErrAlreadyExists
		}
		return putJSON(b, []byte(t.ID), t)
	})
	if err != nil {
		return fmt.Errorf("datastore: create join token: %w", err)
	}
	return nil
}

// PurgeExpiredJoinTokens deletes the join tokens that expired before now and
// returns how many. Expired tokens attest nothing; purging keeps a token
// store that operators fill faster than agents use from growing forever.
func (s *Bolt) PurgeExpiredJoinTokens(_ context.Context, now time.Time) (int, error) {
	var expired [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			var t JoinToken
			if err := json.Unmarshal(v, &t); err != nil {
				return fmt.Errorf("decode join token %s: %w", k, err)
			}
			if !now.Before(t.ExpiresAt) {
				expired = append(expired, append([]byte(nil), k...))
			}
			return nil
		})
	})
	if err != nil || len(expired) == 0 {
		return 0, wrapErr("purge join tokens", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTokens)
		for _, k := range expired {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, wrapErr("purge join tokens", err)
	}
	return len(expired), nil
}

func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("datastore: %s: %w", op, err)
}

// AttestJoinToken consumes the join token tokenID if secretHash matches and it
// has not expired at now, and records agent, in one transaction: a token
// attests at most one agent. An expired token is deleted and ErrTokenExpired
// returned; an unknown, used or mismatching one is ErrTokenInvalid.
func (s *Bolt) AttestJoinToken(_ context.Context, tokenID string, secretHash []byte, now time.Time, agent *Agent) error {
	// A flood of unknown or forged tokens is answered from a read
	// transaction: it never queues on bbolt's single writer, so legitimate
	// writes do not wait behind it.
	err := s.db.View(func(tx *bolt.Tx) error {
		_, err := matchJoinToken(tx, tokenID, secretHash)
		return err
	})
	if err != nil {
		return fmt.Errorf("datastore: attest join token: %w", err)
	}
	expired := false
	err = s.db.Update(func(tx *bolt.Tx) error {
		t, err := matchJoinToken(tx, tokenID, secretHash)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketTokens).Delete([]byte(tokenID)); err != nil {
			return err
		}
		if !now.Before(t.ExpiresAt) {
			expired = true
			return nil
		}
		agents := tx.Bucket(bucketAgents)
		if agents.Get([]byte(agent.SPIFFEID)) != nil {
			return ErrAlreadyExists
		}
		return putJSON(agents, []byte(agent.SPIFFEID), agent)
	})
	if err != nil {
		return fmt.Errorf("datastore: attest join token: %w", err)
	}
	if expired {
		return fmt.Errorf("datastore: attest join token: %w", ErrTokenExpired)
	}
	return nil
}

// matchJoinToken returns the stored token tokenID if its secret hash matches.
func matchJoinToken(tx *bolt.Tx, tokenID string, secretHash []byte) (*JoinToken, error) {
	raw := tx.Bucket(bucketTokens).Get([]byte(tokenID))
	if raw == nil {
		return nil, ErrTokenInvalid
	}
	var t JoinToken
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("decode join token: %w", err)
	}
	if subtle.ConstantTimeCompare(t.SecretHash, secretHash) != 1 {
		return nil, ErrTokenInvalid
	}
	return &t, nil
}

// GetAgent returns the agent with the given SPIFFE ID.
func (s *Bolt) GetAgent(_ context.Context, spiffeID string) (*Agent, error) {
	var a Agent
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketAgents).Get([]byte(spiffeID))
		if raw == nil {
			return ErrNotFound
		}
		return json.Unmarshal(raw, &a)
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: get agent: %w", err)
	}
	return &a, nil
}

// UpdateAgent applies change to the stored agent and writes the result, in
// one transaction: concurrent calls for one agent (a renewal and a sync)
// never undo each other's fields. A missing agent is ErrNotFound, so an
// evicted agent is never recreated by a late renewal.
func (s *Bolt) UpdateAgent(_ context.Context, spiffeID string, change func(*Agent) error) (*Agent, error) {
	var a Agent
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		raw := b.Get([]byte(spiffeID))
		if raw == nil {
			return ErrNotFound
		}
		a = Agent{}
		if err := json.Unmarshal(raw, &a); err != nil {
			return fmt.Errorf("decode agent %s: %w", spiffeID, err)
		}
		if err := change(&a); err != nil {
			return err
		}
		a.SPIFFEID = spiffeID
		return putJSON(b, []byte(spiffeID), &a)
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: update agent: %w", err)
	}
	return &a, nil
}

// AttestAgent records an agent that proved its identity with an attestor
// that can prove it again (x509pop, TPM, PSAT): a new agent is created, a
// known one re-attests, keeping its creation time and taking the new
// attestation's type and selectors, with no SVID serial until one is
// signed. A banned agent is ErrAgentBanned and is left as it is.
func (s *Bolt) AttestAgent(_ context.Context, agent *Agent) (*Agent, error) {
	var out Agent
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		var old *Agent
		if raw := b.Get([]byte(agent.SPIFFEID)); raw != nil {
			old = &Agent{}
			if err := json.Unmarshal(raw, old); err != nil {
				return fmt.Errorf("decode agent %s: %w", agent.SPIFFEID, err)
			}
		}
		a, err := reattested(old, agent)
		if err != nil {
			return err
		}
		out = *a
		return putJSON(b, []byte(agent.SPIFFEID), a)
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: attest agent: %w", err)
	}
	return &out, nil
}

// reattested is the record an attestation of agent leaves, given the one
// stored (nil for none).
func reattested(old, agent *Agent) (*Agent, error) {
	a := *agent
	a.SerialNumber, a.NewSerialNumber, a.Banned = "", "", false
	if old != nil {
		if old.Banned {
			return nil, ErrAgentBanned
		}
		a.CreatedAt = old.CreatedAt
	}
	return &a, nil
}

// ListAgents returns every agent in SPIFFE ID order.
func (s *Bolt) ListAgents(_ context.Context) ([]*Agent, error) {
	var out []*Agent
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgents).ForEach(func(_, v []byte) error {
			var a Agent
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, &a)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: list agents: %w", err)
	}
	return out, nil
}

// DeleteAgent removes (evicts) an agent.
func (s *Bolt) DeleteAgent(_ context.Context, spiffeID string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		if b.Get([]byte(spiffeID)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(spiffeID))
	})
	if err != nil {
		return fmt.Errorf("datastore: delete agent: %w", err)
	}
	return nil
}

// RecordLastSeen raises the LastSeen of each listed agent to the time given
// (never lowers it), in one transaction; agents no longer stored (evicted)
// are skipped. It returns how many records it wrote. The agent API keeps
// sync times in memory and records them with this in batches, so thousands
// of agents syncing every few seconds cost one commit per batch, not one each.
func (s *Bolt) RecordLastSeen(_ context.Context, seen map[string]time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAgents)
		for id, at := range seen {
			raw := b.Get([]byte(id))
			if raw == nil {
				continue
			}
			var a Agent
			if err := json.Unmarshal(raw, &a); err != nil {
				return fmt.Errorf("decode agent %s: %w", id, err)
			}
			if !at.After(a.LastSeen) {
				continue
			}
			a.LastSeen = at
			if err := putJSON(b, []byte(id), &a); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, wrapErr("record last seen", err)
	}
	return n, nil
}
