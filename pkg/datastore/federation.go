package datastore

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	bucketFederations      = []byte("federations")
	bucketFederatedBundles = []byte("federated_bundles")
)

// Federation is a relationship with a foreign trust domain.
type Federation struct {
	TrustDomain      string `json:"trust_domain"`
	URL              string `json:"url"`
	Profile          string `json:"profile"`
	EndpointSPIFFEID string `json:"endpoint_spiffe_id,omitempty"`
	// WebRootsPEM, if set, replace the system roots for https_web.
	WebRootsPEM []byte `json:"web_roots_pem,omitempty"`
	// LastRefresh and LastError tell the last fetch's outcome.
	LastRefresh time.Time `json:"last_refresh"`
	LastError   string    `json:"last_error,omitempty"`
}

// FederatedBundle is the latest good bundle of a foreign trust domain, as
// SPIFFE bundle JSON.
type FederatedBundle struct {
	TrustDomain string `json:"trust_domain"`
	Raw         []byte `json:"raw"`
}

// PutFederation creates or replaces a relationship; with create set an
// existing one is ErrAlreadyExists.
func (s *Bolt) PutFederation(_ context.Context, f *Federation, create bool) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFederations)
		exists := b.Get([]byte(f.TrustDomain)) != nil
		switch {
		case create && exists:
			return ErrAlreadyExists
		case !create && !exists:
			return ErrNotFound
		}
		return putJSON(b, []byte(f.TrustDomain), f)
	})
	if err != nil {
		return fmt.Errorf("datastore: put federation: %w", err)
	}
	return nil
}

// GetFederation returns the relationship with td.
func (s *Bolt) GetFederation(_ context.Context, td string) (*Federation, error) {
	var f Federation
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketFederations).Get([]byte(td))
		if raw == nil {
			return ErrNotFound
		}
		return json.Unmarshal(raw, &f)
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: get federation: %w", err)
	}
	return &f, nil
}

// ListFederations returns every relationship.
func (s *Bolt) ListFederations(_ context.Context) ([]*Federation, error) {
	var out []*Federation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFederations).ForEach(func(_, v []byte) error {
			var f Federation
			if err := json.Unmarshal(v, &f); err != nil {
				return err
			}
			out = append(out, &f)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: list federations: %w", err)
	}
	return out, nil
}

// DeleteFederation removes a relationship and its bundle.
func (s *Bolt) DeleteFederation(_ context.Context, td string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFederations)
		if b.Get([]byte(td)) == nil {
			return ErrNotFound
		}
		if err := tx.Bucket(bucketFederatedBundles).Delete([]byte(td)); err != nil {
			return err
		}
		return b.Delete([]byte(td))
	})
	if err != nil {
		return fmt.Errorf("datastore: delete federation: %w", err)
	}
	return nil
}

// RecordFederationRefresh records the outcome of a fetch made with the
// relationship read, in one transaction: the bundle (when not nil) and the
// refresh status. If the relationship's settings changed since read was
// taken (an update raced with the fetch), nothing is written and ErrChanged
// returned: a poll in flight never undoes an update, nor stores a bundle
// fetched under the old settings.
func (s *Bolt) RecordFederationRefresh(_ context.Context, read *Federation, bundle []byte, at time.Time, fetchErr string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFederations)
		raw := b.Get([]byte(read.TrustDomain))
		if raw == nil {
			return ErrNotFound
		}
		var cur Federation
		if err := json.Unmarshal(raw, &cur); err != nil {
			return fmt.Errorf("decode federation: %w", err)
		}
		if !sameFederationSettings(&cur, read) {
			return ErrChanged
		}
		if bundle != nil {
			if err := tx.Bucket(bucketFederatedBundles).Put([]byte(read.TrustDomain), bundle); err != nil {
				return err
			}
		}
		if fetchErr == "" {
			cur.LastRefresh = at
		}
		cur.LastError = fetchErr
		return putJSON(b, []byte(cur.TrustDomain), &cur)
	})
	if err != nil {
		return fmt.Errorf("datastore: record federation refresh: %w", err)
	}
	return nil
}

// sameFederationSettings tells whether a fetch made with read's settings
// may record its outcome on cur.
func sameFederationSettings(cur, read *Federation) bool {
	return cur.URL == read.URL && cur.Profile == read.Profile && cur.EndpointSPIFFEID == read.EndpointSPIFFEID && bytes.Equal(cur.WebRootsPEM, read.WebRootsPEM)
}

// SetFederatedBundle stores the latest good bundle of td.
func (s *Bolt) SetFederatedBundle(_ context.Context, td string, raw []byte) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFederatedBundles).Put([]byte(td), raw)
	})
	if err != nil {
		return fmt.Errorf("datastore: set federated bundle: %w", err)
	}
	return nil
}

// GetFederatedBundle returns the stored bundle of td, ErrNotFound if none.
func (s *Bolt) GetFederatedBundle(_ context.Context, td string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketFederatedBundles).Get([]byte(td))
		if raw == nil {
			return ErrNotFound
		}
		out = append([]byte(nil), raw...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: get federated bundle: %w", err)
	}
	return out, nil
}

// ListFederatedBundles returns every stored foreign bundle.
func (s *Bolt) ListFederatedBundles(_ context.Context) ([]FederatedBundle, error) {
	var out []FederatedBundle
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketFederatedBundles).ForEach(func(k, v []byte) error {
			out = append(out, FederatedBundle{TrustDomain: string(k), Raw: append([]byte(nil), v...)})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("datastore: list federated bundles: %w", err)
	}
	return out, nil
}

// DeleteFederatedBundle removes a stored foreign bundle.
func (s *Bolt) DeleteFederatedBundle(_ context.Context, td string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketFederatedBundles)
		if b.Get([]byte(td)) == nil {
			return ErrNotFound
		}
		return b.Delete([]byte(td))
	})
	if err != nil {
		return fmt.Errorf("datastore: delete federated bundle: %w", err)
	}
	return nil
}
