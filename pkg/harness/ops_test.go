package harness_test

import (
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// Join tokens and private keys never reach the logs, at debug level.
func TestSecretsNeverLogged(t *testing.T) {
	var logs harness.LogBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := harness.StartServer(t, func(c *server.Config) { c.Logger = logger })
	token, _ := srv.NewJoinToken(t)
	ag := harness.StartAgent(t, srv, func(c *agent.Config) { c.Logger = logger; c.JoinToken = token })
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	x, err := fetchX509(t, ag.Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	minted, err := srv.Admin.MintX509SVID(context.Background(), &adminv1.MintX509SVIDRequest{SpiffeId: "spiffe://example.org/tool"})
	if err != nil {
		t.Fatal(err)
	}
	// A bad attestation attempt with the spent token logs a refusal.
	_, csr := harness.NewCSR(t, spiffeid.ID{})
	_, _ = harness.Attest(t, srv, token, csr)

	out := logs.String()
	if !strings.Contains(out, "agent attestation refused") {
		t.Fatal("the refused attestation was not logged; the test would prove nothing")
	}
	_, secret, _ := strings.Cut(token, ".")
	_, workloadKey, _ := x.DefaultSVID().MarshalRaw()
	for name, s := range map[string]string{
		"join token secret":      secret,
		"minted private key":     base64.StdEncoding.EncodeToString(minted.GetPrivateKey())[:40],
		"workload private key":   base64.StdEncoding.EncodeToString(workloadKey)[:40],
		"PEM private key header": "PRIVATE KEY",
		"private key field":      "private_key",
	} {
		if strings.Contains(out, s) {
			t.Errorf("logs contain the %s", name)
		}
	}
}

func TestMetricsHealthAndReadiness(t *testing.T) {
	srv := harness.StartServer(t, func(c *server.Config) { c.MetricsAddr = "127.0.0.1:0" })
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.MetricsAddr()
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ok",
		"/metrics": `shortleaf_server_x509_svids_issued_total{result="ok"}`,
	} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("%s: %d, body lacks %q", path, resp.StatusCode, want)
		}
		if path == "/metrics" && !strings.Contains(string(body), "shortleaf_server_x509_svid_sign_duration_seconds_bucket") {
			t.Error("/metrics lacks the signing latency histogram")
		}
	}
}

// An entry change reaches an open FetchX509SVID stream as a new SVID.
func TestEntryChangeIsPushedToOpenStream(t *testing.T) {
	srv := harness.StartServer(t)
	ag := harness.StartAgent(t, srv)
	e := srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	client, err := workloadapi.New(context.Background(), workloadapi.WithAddr(ag.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	updates := make(chan *x509svid.SVID, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	go func() { _ = client.WatchX509Context(ctx, watcher{updates}) }()
	first := <-updates
	if len(first.Certificates[0].DNSNames) != 0 {
		t.Fatal("unexpected DNS names before the update")
	}
	e.DnsNames = []string{"web.internal"}
	if _, err := srv.Admin.UpdateEntry(ctx, &adminv1.UpdateEntryRequest{Entry: e}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case s := <-updates:
			if len(s.Certificates[0].DNSNames) == 1 && s.Certificates[0].DNSNames[0] == "web.internal" {
				return
			}
		case <-ctx.Done():
			t.Fatal("the entry change never reached the open stream")
		}
	}
}

func TestLifecycleMetrics(t *testing.T) {
	srv := harness.StartServer(t, fastRotation, func(c *server.Config) { c.MetricsAddr = "127.0.0.1:0" })
	harness.StartAgent(t, srv)
	deadline := time.Now().Add(15 * time.Second)
	want := []string{
		`shortleaf_ca_authority_transitions_total{kind="intermediate",transition="activated"}`,
		`shortleaf_ca_authority_transitions_total{kind="intermediate",transition="prepared"}`,
		`shortleaf_ca_authority_not_after_timestamp_seconds{kind="intermediate",state="active"}`,
		`shortleaf_ca_authority_not_after_timestamp_seconds{kind="root",state="active"}`,
		`shortleaf_ca_bundle_propagation_ratio 1`,
	}
	for {
		resp, err := http.Get("http://" + srv.MetricsAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		missing := ""
		for _, w := range want {
			if !strings.Contains(string(body), w) {
				missing = w
			}
		}
		// A scheduled rotation (prepare at ~4s, activate at ~6s) must show up.
		if missing == "" && strings.Contains(string(body), `transition="superseded"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %q after a rotation", missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestAgentMetrics(t *testing.T) {
	srv := harness.StartServer(t)
	reg := prometheus.NewRegistry()
	ag := harness.StartAgent(t, srv, func(c *agent.Config) { c.Registry = reg })
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The agent refreshes its gauges on every loop; poll until they settle.
	var got map[string]float64
	for deadline := time.Now().Add(10 * time.Second); ; {
		got = gatherAll(t, reg)
		if got["shortleaf_agent_workload_api_first_response_seconds"] >= 1 && got["shortleaf_agent_cached_x509_svids"] == 1 &&
			got["shortleaf_agent_expired_x509_svids"] == 0 && got["shortleaf_agent_x509_svid_renewals_total"] >= 1 &&
			got["shortleaf_agent_workload_api_requests_total"] >= 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent metrics = %v", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gatherAll sums every sample of each metric family (histograms by count).
func gatherAll(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetHistogram() != nil:
				got[f.GetName()] += float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				got[f.GetName()] += m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				got[f.GetName()] += m.GetCounter().GetValue()
			}
		}
	}
	return got
}
