package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// maxCachedJWTs bounds the JWT-SVID cache; expired tokens are dropped first.
const maxCachedJWTs = 10000

// jwtCache keeps one JWT-SVID per (entry, audience set), refreshed at
// half-life like X.509-SVIDs, so workloads asking again get the same token
// and the server signs once per half-life, not once per request.
type jwtCache struct {
	mu     sync.Mutex
	tokens map[string]*cachedJWT
}

type cachedJWT struct {
	token     string
	expiresAt time.Time
	refreshAt time.Time
	revision  int64
}

func jwtKey(entryID string, audience []string) string {
	aud := slices.Clone(audience)
	slices.Sort(aud)
	return entryID + "\x00" + strings.Join(slices.Compact(aud), "\x00")
}

// FetchJWTSVID implements workloadapi.JWTSource: a cached token while it is
// before its refresh time and its entry unchanged, else a new one from the
// server.
func (a *Agent) FetchJWTSVID(ctx context.Context, entryID string, audience []string) (string, error) {
	e, _ := a.cache.lookup(entryID)
	if e == nil {
		return "", fmt.Errorf("agent: entry %s is not cached", entryID)
	}
	key := jwtKey(entryID, audience)
	now := a.cfg.Clock.Now()
	a.jwts.mu.Lock()
	if c, ok := a.jwts.tokens[key]; ok && now.Before(c.refreshAt) && c.revision == e.Revision {
		a.jwts.mu.Unlock()
		return c.token, nil
	}
	a.jwts.mu.Unlock()

	a.mu.Lock()
	client := a.client
	a.mu.Unlock()
	if client == nil {
		return "", fmt.Errorf("agent: not connected to the server yet")
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := client.NewJWTSVID(ctx, &agentv1.NewJWTSVIDRequest{EntryId: entryID, Audience: audience})
	if err != nil {
		return "", fmt.Errorf("agent: new JWT-SVID: %w", err)
	}
	exp := time.Unix(resp.GetExpiresAt(), 0)
	a.jwts.mu.Lock()
	defer a.jwts.mu.Unlock()
	if a.jwts.tokens == nil {
		a.jwts.tokens = map[string]*cachedJWT{}
	}
	if len(a.jwts.tokens) >= maxCachedJWTs {
		for k, c := range a.jwts.tokens {
			if !now.Before(c.expiresAt) {
				delete(a.jwts.tokens, k)
			}
		}
		if len(a.jwts.tokens) >= maxCachedJWTs {
			clear(a.jwts.tokens)
		}
	}
	a.jwts.tokens[key] = &cachedJWT{token: resp.GetToken(), expiresAt: exp, refreshAt: RenewAt(now, exp), revision: e.Revision}
	return resp.GetToken(), nil
}
