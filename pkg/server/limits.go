package server

import (
	"time"

	"github.com/shortleaf/shortleaf/pkg/api"
	"github.com/shortleaf/shortleaf/pkg/ratelimit"
	"github.com/shortleaf/shortleaf/pkg/rpclimit"
	"github.com/shortleaf/shortleaf/pkg/signqueue"
	agentv1 "github.com/shortleaf/shortleaf/proto/agent/v1"
)

// Limits are the server's defences against hostile or broken clients. Zero
// fields take the defaults below; a negative rate turns that limit off.
type Limits struct {
	// AttestationsPerSecond and AttestationBurst bound node attestations per
	// source IP address (default 1/s, burst 10).
	AttestationsPerSecond float64
	AttestationBurst      int
	// SigningPerSecond and SigningBurst bound the SVIDs each agent may have
	// signed (default 500/s, burst 1000; a burst below the largest batch is
	// raised to it).
	SigningPerSecond float64
	SigningBurst     int
	// MaxConnections bounds the agent API's open connections (default 10000).
	MaxConnections int
	// MaxConnectionAge closes every agent connection after this long (plus
	// a minute for calls in flight), so agents reconnect, spread over the
	// replicas that are up and pick up the server's current certificate
	// (default 30m).
	MaxConnectionAge time.Duration
	// SigningQueue bounds the CSRs (from all agents) waiting for a signature
	// (default signqueue.DefaultCapacity); SigningQueueMaxWait is the
	// longest one may wait (default signqueue.DefaultMaxWait). Beyond them
	// the least urgent are refused with a retry-after hint.
	SigningQueue        int
	SigningQueueMaxWait time.Duration
	// SigningCapacity caps the X.509-SVIDs signed per second by the whole
	// server, for a signing key with a quota (an HSM, a cloud KMS); 0 or
	// -1: as fast as the cores go.
	SigningCapacity float64
}

// Default limits.
const (
	DefaultAttestationsPerSecond = 1
	DefaultAttestationBurst      = 10
	DefaultSigningPerSecond      = 500
	DefaultSigningBurst          = 2 * api.MaxBatchSize
	DefaultMaxConnections        = 10_000
	DefaultMaxConnectionAge      = 30 * time.Minute
)

// Limits of the agent API's transport. Requests are small: a CSR is a few
// hundred bytes, and a batch is bounded by api.MaxBatchCSRBytes.
const (
	agentAPIMaxMessage = api.MaxBatchCSRBytes + 32<<10
	agentAPISmallCall  = 16 << 10
)

func (l *Limits) applyDefaults() {
	if l.AttestationsPerSecond == 0 {
		l.AttestationsPerSecond = DefaultAttestationsPerSecond
	}
	if l.AttestationBurst == 0 {
		l.AttestationBurst = DefaultAttestationBurst
	}
	if l.SigningPerSecond == 0 {
		l.SigningPerSecond = DefaultSigningPerSecond
	}
	if l.SigningBurst == 0 {
		l.SigningBurst = DefaultSigningBurst
	}
	l.SigningBurst = max(l.SigningBurst, api.MaxBatchSize) // a full batch must be able to pass
	if l.MaxConnectionAge == 0 {
		l.MaxConnectionAge = DefaultMaxConnectionAge
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
}

func (l Limits) signQueueConfig() signqueue.Config {
	return signqueue.Config{Capacity: l.SigningQueue, MaxWait: l.SigningQueueMaxWait, PerSecond: max(l.SigningCapacity, 0)}
}

func (l Limits) attestLimiter() *ratelimit.Limiter {
	return ratelimit.New(ratelimit.Config{PerSecond: l.AttestationsPerSecond, Burst: l.AttestationBurst})
}

func (l Limits) signLimiter() *ratelimit.Limiter {
	return ratelimit.New(ratelimit.Config{PerSecond: l.SigningPerSecond, Burst: l.SigningBurst})
}

// agentAPILimits: a stalled stream pins at most agentAPIMaxMessage, so 200
// of them pin ~25 MiB; connections are recycled every MaxConnectionAge so agents
// rebalance across servers and pick up the server's current certificate.
func (l Limits) agentAPILimits() rpclimit.Limits {
	return rpclimit.Limits{
		MaxRecvMsgSize: agentAPIMaxMessage,
		MethodRecvSize: map[string]int{
			agentv1.AgentAPI_AttestAgent_FullMethodName: 2 * agentAPISmallCall,
			agentv1.AgentAPI_RenewAgent_FullMethodName:  agentAPISmallCall,
			agentv1.AgentAPI_SyncEntries_FullMethodName: 2 * agentAPISmallCall,
			agentv1.AgentAPI_Sync_FullMethodName:        2 * agentAPISmallCall,
			agentv1.AgentAPI_NewJWTSVID_FullMethodName:  agentAPISmallCall,
		},
		MaxConcurrentStreams:  64,
		MaxConnections:        l.MaxConnections,
		MaxConnectionIdle:     2 * time.Minute,
		MaxConnectionAge:      l.MaxConnectionAge,
		MaxConnectionAgeGrace: time.Minute,
		HandshakeTimeout:      10 * time.Second,
		// Agents ping every 10 s of silence to find a dead path to their
		// server (agent.KeepaliveInterval); pings up to twice as often pass.
		KeepaliveMinTime: 5 * time.Second,
		UnaryTimeout:     time.Minute,
	}
}

// adminLimits: the admin socket is local and uid-checked; the limits only
// keep a runaway script from exhausting the server.
func adminLimits() rpclimit.Limits {
	return rpclimit.Limits{
		MaxRecvMsgSize:       4 << 20, // a federated bundle may be set by hand: up to 1 MiB, refused by name above that
		MaxConcurrentStreams: 16,
		MaxConnections:       64,
		MaxConnectionIdle:    5 * time.Minute,
		HandshakeTimeout:     10 * time.Second,
		KeepaliveMinTime:     10 * time.Second,
		UnaryTimeout:         2 * time.Minute,
	}
}
