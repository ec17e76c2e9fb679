package telemetry

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/signqueue"
)

// Result label values.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
	ResultBad    = "invalid"
)

// Results lists every result label value, for counters that start at 0.
var Results = []string{ResultOK, ResultDenied, ResultBad, ResultError}

// Label values the counters are initialised with, so that an alert on any of
// them reads 0 from the start instead of "no data".
var (
	// RefusalReasons are the server's resource-limit refusals.
	RefusalReasons = []string{"attestation_rate", "signing_rate", "batch_limit", "signing_queue", "message_size", "connection_limit"}
	// NodeAttestors are the node attestation plugins.
	NodeAttestors = []string{"join_token", "x509pop", "tpm", "k8s_psat"}
	// WorkloadAPIMethods are the agent socket's RPCs (Workload API and SDS).
	WorkloadAPIMethods = []string{"FetchX509SVID", "FetchX509Bundles", "FetchJWTSVID", "FetchJWTBundles", "ValidateJWTSVID", "FetchSecrets", "StreamSecrets"}
	// RenewalCauses are why the agent obtained a workload SVID.
	RenewalCauses = []string{"new", "scheduled", "entry_changed"}
)

// initLabels creates the series of v for every combination of values, one
// slice per label, so each reads 0 until it is first counted.
func initLabels(v *prometheus.CounterVec, values ...[]string) {
	var walk func(prefix []string, rest [][]string)
	walk = func(prefix []string, rest [][]string) {
		if len(rest) == 0 {
			v.WithLabelValues(prefix...)
			return
		}
		for _, x := range rest[0] {
			walk(append(prefix[:len(prefix):len(prefix)], x), rest[1:])
		}
	}
	walk(nil, values)
}

// Server holds the server's metrics.
type Server struct {
	SVIDsIssued       *prometheus.CounterVec
	SignDuration      prometheus.Histogram
	AgentAttestations *prometheus.CounterVec
	AgentRenewals     *prometheus.CounterVec
	// Refusals counts requests refused by a limit, by reason
	// (attestation_rate, signing_rate, batch_limit, message_size, ...).
	Refusals *prometheus.CounterVec
	// SyncStreams is the number of agents' Sync streams open now.
	SyncStreams prometheus.Gauge
	// SyncStarts counts how each Sync stream (or resubscription after
	// falling behind) caught the agent up: resumed from the feed's memory,
	// unchanged since the agent's revision, or a full read of its entries.
	SyncStarts *prometheus.CounterVec
	// SyncChanges counts entry changes pushed to agents.
	SyncChanges prometheus.Counter
	// SignQueueWait is how long CSRs waited in the signing queue;
	// SignQueueShed counts those it refused or dropped, by reason.
	SignQueueWait prometheus.Histogram
	SignQueueShed *prometheus.CounterVec
	// BatchDuration is a BatchNewX509SVID call on the server, from its
	// arrival to its answer: queueing, signing and the audit record.
	BatchDuration prometheus.Histogram
	// ClockSkew is the agents' clock skew (absolute), one observation per
	// sync request.
	ClockSkew prometheus.Histogram
}

// WatchClockSkew registers the largest clock skew among the live agents,
// read at each scrape.
func (m *Server) WatchClockSkew(reg prometheus.Registerer, most func() time.Duration) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "shortleaf_server_agent_clock_skew_max_seconds",
		Help: "The largest clock skew (absolute, server clock minus agent clock) among agents that synced within the liveness window.",
	}, func() float64 { return most().Seconds() }))
}

// SignQueueShedReasons are the values of SignQueueShed's reason label.
var SignQueueShedReasons = signqueue.Reasons

// WatchSignQueue registers the signing queue's depth, read at each scrape.
func (m *Server) WatchSignQueue(reg prometheus.Registerer, depth func() int) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "shortleaf_server_signing_queue_depth",
		Help: "CSRs waiting in the signing queue now.",
	}, func() float64 { return float64(depth()) }))
}

// IssuedTotals reads the X.509-SVID request counters by result, for the
// status page's history.
func (m *Server) IssuedTotals() map[string]float64 {
	out := make(map[string]float64, len(Results))
	for _, r := range Results {
		var d dto.Metric
		if err := m.SVIDsIssued.WithLabelValues(r).Write(&d); err == nil {
			out[r] = d.GetCounter().GetValue()
		}
	}
	return out
}

// SyncStartKinds are the values of SyncStarts' kind label.
var SyncStartKinds = []string{"resumed", "unchanged", "full"}

// NewServer registers the server's metrics on reg.
func NewServer(reg prometheus.Registerer) *Server {
	m := &Server{
		SVIDsIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shortleaf_server_x509_svids_issued_total",
			Help: "X.509-SVID signing requests by result (ok, denied, invalid, error).",
		}, []string{"result"}),
		SignDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shortleaf_server_x509_svid_sign_duration_seconds",
			Help:    "Time to check a CSR and sign one X.509-SVID.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}),
		AgentAttestations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shortleaf_server_agent_attestations_total",
			Help: "Node attestations by attestor and result.",
		}, []string{"attestor", "result"}),
		AgentRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shortleaf_server_agent_svid_renewals_total",
			Help: "Agent SVID renewals by result.",
		}, []string{"result"}),
	}
	m.Refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shortleaf_server_requests_refused_total",
		Help: "Requests refused by a resource limit, by reason (attestation_rate, signing_rate, batch_limit, signing_queue, message_size, connection_limit).",
	}, []string{"reason"})
	m.SyncStreams = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shortleaf_server_sync_streams",
		Help: "Agents' Sync streams open on this server now.",
	})
	m.SyncStarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shortleaf_server_sync_starts_total",
		Help: "How Sync streams caught their agent up: resumed (changes since its revision, from memory), unchanged (none since), full (all of its entries read afresh).",
	}, []string{"kind"})
	m.SyncChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "shortleaf_server_sync_entry_changes_total",
		Help: "Entry changes (creations, updates, deletions) pushed to agents, full reads not included.",
	})
	m.SignQueueWait = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "shortleaf_server_signing_queue_wait_seconds",
		Help:    "Time a CSR waited in the signing queue before a worker took it.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	m.SignQueueShed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shortleaf_server_signing_shed_total",
		Help: "CSRs the signing queue refused (queue_full, fair_share), gave up for more urgent ones (displaced), or dropped unsigned (too_late, caller_gone, closed).",
	}, []string{"reason"})
	m.BatchDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "shortleaf_server_x509_svid_batch_duration_seconds",
		Help:    "Time from a BatchNewX509SVID call's arrival to its answer (queueing, signing, the audit record).",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30},
	})
	m.ClockSkew = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "shortleaf_server_agent_clock_skew_seconds",
		Help:    "Agents' clock skew (absolute, server clock minus agent clock), one observation per sync request.",
		Buckets: []float64{.05, .1, .25, .5, 1, 2, 5, 10, 15, 30, 60, 300},
	})
	initLabels(m.SignQueueShed, SignQueueShedReasons)
	initLabels(m.SVIDsIssued, Results)
	initLabels(m.AgentAttestations, NodeAttestors, Results)
	initLabels(m.AgentRenewals, Results)
	initLabels(m.Refusals, RefusalReasons)
	initLabels(m.SyncStarts, SyncStartKinds)
	reg.MustRegister(m.SVIDsIssued, m.SignDuration, m.AgentAttestations, m.AgentRenewals, m.Refusals, m.SyncStreams, m.SyncStarts, m.SyncChanges, m.SignQueueWait, m.SignQueueShed,
		m.BatchDuration, m.ClockSkew)
	return m
}

// CA holds the key lifecycle metrics.
type CA struct {
	AuthorityNotAfter *prometheus.GaugeVec
	Transitions       *prometheus.CounterVec
	Propagation       prometheus.Gauge
	// Root rotation: time left on the active root, its deadline, and how
	// long (and on how many agents and consumers) the next root has waited.
	RootTimeToExpiry prometheus.Gauge
	RootDeadline     prometheus.Gauge
	RootGateBlocked  prometheus.Gauge
	RootGateBlockers prometheus.Gauge
	// NextTransition is when the key schedule next changes an authority.
	NextTransition prometheus.Gauge
	// FederationLastRefresh is each federated bundle's last successful
	// fetch; FederationFailing is 1 while its last fetch failed.
	FederationLastRefresh *prometheus.GaugeVec
	FederationFailing     *prometheus.GaugeVec
}

// NewCA registers the key lifecycle metrics on reg.
func NewCA(reg prometheus.Registerer) *CA {
	m := &CA{
		AuthorityNotAfter: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "shortleaf_ca_authority_not_after_timestamp_seconds",
			Help: "Earliest expiry (Unix time) of the CA's authorities, by kind and state; alert when the active one nears its rotation threshold.",
		}, []string{"kind", "state"}),
		Transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shortleaf_ca_authority_transitions_total",
			Help: "Authority state transitions, by kind and transition.",
		}, []string{"kind", "transition"}),
		Propagation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shortleaf_ca_bundle_propagation_ratio",
			Help: "Share of live agents that hold the newest trust bundle (1 when there are none).",
		}),
	}
	m.RootTimeToExpiry = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shortleaf_ca_root_time_to_expiry_seconds",
		Help: "Seconds until the active root expires. Root rotation starts root_prepare_before ahead; alert well before this nears that lead.",
	})
	m.RootDeadline = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shortleaf_ca_root_rotation_deadline_timestamp_seconds",
		Help: "When the active root stops signing full-lifetime intermediates (Unix time); its successor should be active by then (0 with an upstream authority).",
	})
	m.RootGateBlocked = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shortleaf_ca_root_gate_blocked_seconds",
		Help: "How long the prepared next root has waited on the propagation gate (0 when none waits).",
	})
	m.RootGateBlockers = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shortleaf_ca_root_gate_blockers",
		Help: "Live agents and federated consumers that still lack the prepared next root, at the last gate check (0 when none waits).",
	})
	m.NextTransition = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "shortleaf_ca_next_transition_timestamp_seconds",
		Help: "When the key schedule next prepares, activates or retires an authority (Unix time); alert when it lies in the past for long: rotation is stuck.",
	})
	m.FederationLastRefresh = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shortleaf_federation_last_refresh_timestamp_seconds",
		Help: "When each federated trust domain's bundle was last fetched successfully (Unix time; 0 never).",
	}, []string{"trust_domain"})
	m.FederationFailing = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shortleaf_federation_refresh_failing",
		Help: "1 while the last fetch of a federated trust domain's bundle failed (the last good bundle is kept), else 0.",
	}, []string{"trust_domain"})
	reg.MustRegister(m.AuthorityNotAfter, m.Transitions, m.Propagation, m.RootTimeToExpiry, m.RootDeadline, m.RootGateBlocked, m.RootGateBlockers,
		m.NextTransition, m.FederationLastRefresh, m.FederationFailing)
	return m
}

// Agent holds the agent's metrics.
type Agent struct {
	WorkloadRequests *prometheus.CounterVec
	SVIDRenewals     *prometheus.CounterVec
	// SVIDRequestsShed counts CSRs the server's signing queue could not
	// take; the agent asks again after the server's retry-after hint.
	SVIDRequestsShed prometheus.Counter
	SyncFailures     prometheus.Counter
	// CachedSVIDs and ExpiredSVIDs are read from the agent's cache at each
	// scrape, so they are current even while the agent waits on a server.
	// ExpiredSVIDs counts cached SVIDs past their NotAfter: renewal did not
	// keep up (server unreachable for half a TTL). It should stay 0.
	CachedSVIDs  prometheus.GaugeFunc
	ExpiredSVIDs prometheus.GaugeFunc
	// FirstResponse is the time from a Workload API call to its first answer.
	FirstResponse *prometheus.HistogramVec
	// WorkloadRefusals counts Workload API connections refused by a cap.
	WorkloadRefusals *prometheus.CounterVec
	// OpenStreams is the number of Workload API and SDS streams open now.
	OpenStreams *prometheus.GaugeVec
	// IssueDuration is a BatchNewX509SVID call's round trip as the agent
	// sees it (queueing, signing and the audit record on the server
	// included); IssueResults counts the CSRs by the gRPC code answered.
	IssueDuration prometheus.Histogram
	IssueResults  *prometheus.CounterVec
}

// IssueCodes are the codes IssueResults starts with at 0.
var IssueCodes = []string{"OK", "PermissionDenied", "InvalidArgument", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Internal"}

// WatchSync registers the time of the agent's last answered sync, read at
// each scrape (0 before the first): alert on time() minus it.
func (m *Agent) WatchSync(reg prometheus.Registerer, last func() time.Time) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "shortleaf_agent_last_sync_timestamp_seconds",
		Help: "When the server last answered the agent's entry sync (Unix time; 0 before the first).",
	}, func() float64 {
		if t := last(); !t.IsZero() {
			return float64(t.UnixNano()) / 1e9
		}
		return 0
	}))
}

// SVIDCounts reports how many X.509-SVIDs an agent holds and how many of
// them are past their NotAfter.
type SVIDCounts func() (cached, expired int)

// NewAgent registers the agent's metrics on reg; counts feeds the SVID
// gauges (nil: none held).
func NewAgent(reg prometheus.Registerer, counts SVIDCounts) *Agent {
	if counts == nil {
		counts = func() (int, int) { return 0, 0 }
	}
	m := &Agent{
		WorkloadRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shortleaf_agent_workload_api_requests_total",
			Help: "Workload API and SDS calls by method and result; a stream counts once, at its first response (or when it fails before one).",
		}, []string{"method", "result"}),
		SVIDRenewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shortleaf_agent_x509_svid_renewals_total",
			Help: "Workload X.509-SVIDs obtained by the agent, by cause (new, scheduled, entry_changed).",
		}, []string{"cause"}),
		SVIDRequestsShed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shortleaf_agent_x509_svid_requests_shed_total",
			Help: "Workload CSRs the server's signing queue could not take (server busy); each is asked again after the server's retry-after hint.",
		}),
		SyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shortleaf_agent_sync_failures_total",
			Help: "Failed entry syncs with the server.",
		}),
		CachedSVIDs: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "shortleaf_agent_cached_x509_svids",
			Help: "X.509-SVIDs the agent holds ready for workloads.",
		}, func() float64 {
			cached, _ := counts()
			return float64(cached)
		}),
	}
	m.ExpiredSVIDs = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "shortleaf_agent_expired_x509_svids",
		Help: "Cached X.509-SVIDs past their NotAfter (renewal fell behind), as of the scrape; alert when above 0.",
	}, func() float64 {
		_, expired := counts()
		return float64(expired)
	})
	m.FirstResponse = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "shortleaf_agent_workload_api_first_response_seconds",
		Help:    "Time from a Workload API or SDS call to its first response, by method.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"method"})
	m.WorkloadRefusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shortleaf_agent_workload_api_refused_total",
		Help: "Workload API connections refused by a limit, by reason (connection_limit).",
	}, []string{"reason"})
	m.OpenStreams = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "shortleaf_agent_workload_api_streams",
		Help: "Workload API and SDS streams open now, by method.",
	}, []string{"method"})
	m.IssueDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "shortleaf_agent_x509_svid_issuance_duration_seconds",
		Help:    "Round trip of one batch of X.509-SVID requests to the server, as the agent sees it.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30},
	})
	m.IssueResults = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shortleaf_agent_x509_svid_issuance_results_total",
		Help: "X.509-SVID requests the agent sent, by the gRPC code answered (a failed call counts each of its CSRs).",
	}, []string{"code"})
	initLabels(m.WorkloadRequests, WorkloadAPIMethods, []string{ResultOK, ResultDenied, ResultError})
	initLabels(m.SVIDRenewals, RenewalCauses)
	initLabels(m.WorkloadRefusals, []string{"connection_limit"})
	initLabels(m.IssueResults, IssueCodes)
	reg.MustRegister(m.WorkloadRequests, m.SVIDRenewals, m.SVIDRequestsShed, m.SyncFailures, m.CachedSVIDs, m.ExpiredSVIDs, m.FirstResponse, m.WorkloadRefusals, m.OpenStreams,
		m.IssueDuration, m.IssueResults)
	return m
}

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// ObserveSince records the seconds since start on h.
func ObserveSince(h prometheus.Observer, start time.Time) {
	h.Observe(time.Since(start).Seconds())
}

// Handler serves /metrics from g, /healthz (the process is up) and /readyz
// (ready returns nil).
func Handler(g prometheus.Gatherer, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// WatchAudit registers the audit log's metrics, read at each scrape from
// stats and queued.
func WatchAudit(reg prometheus.Registerer, stats func() audit.Stats, queued func() int) {
	counter := func(name, help string, v func(audit.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return float64(v(stats())) })
	}
	reg.MustRegister(
		counter("shortleaf_audit_records_total", "Audit records written (fsynced).", func(s audit.Stats) uint64 { return s.Records }),
		counter("shortleaf_audit_commits_total", "Audit log writes, each one fsync of a batch of records.", func(s audit.Stats) uint64 { return s.Commits }),
		counter("shortleaf_audit_write_errors_total", "Failed audit log writes; issuance waits while they fail.", func(s audit.Stats) uint64 { return s.WriteErrors }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shortleaf_audit_queue_depth", Help: "Audit records waiting to be written."},
			func() float64 { return float64(queued()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shortleaf_audit_head_seq", Help: "Sequence number of the last audit record written."},
			func() float64 { return float64(stats().Head) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "shortleaf_audit_last_checkpoint_timestamp_seconds",
			Help: "When the audit log's head was last signed (Unix time; 0 before the first checkpoint)."},
			func() float64 {
				t := stats().LastCheckpoint
				if t.IsZero() {
					return 0
				}
				return float64(t.Unix())
			}),
	)
}
