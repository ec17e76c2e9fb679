package telemetry_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/shortleaf/shortleaf/pkg/audit"
	"github.com/shortleaf/shortleaf/pkg/telemetry"
)

// monitoringDir holds the alert rules and the dashboard.
var monitoringDir = filepath.Join("..", "..", "docs", "monitoring")

// recordingRegisterer registers on a registry and keeps every metric name
// described, including vectors that have no series yet.
type recordingRegisterer struct {
	*prometheus.Registry
	names map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return r.Registry.Register(c)
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// exported is every metric name the server and the agent export.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	reg := &recordingRegisterer{Registry: prometheus.NewRegistry(), names: map[string]bool{}}
	srv := telemetry.NewServer(reg)
	srv.WatchSignQueue(reg, func() int { return 0 })
	srv.WatchClockSkew(reg, func() time.Duration { return 0 })
	telemetry.NewCA(reg)
	telemetry.NewAgent(reg, nil).WatchSync(reg, time.Now)
	telemetry.WatchAudit(reg, func() audit.Stats { return audit.Stats{} }, func() int { return 0 })
	if len(reg.names) < 40 {
		t.Fatalf("only %d metric names found: the recording registerer misses some", len(reg.names))
	}
	return reg.names
}

type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Record string `yaml:"record"`
			Alert  string `yaml:"alert"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

var (
	metricRef    = regexp.MustCompile(`\bshortleaf_[a-z0-9_]+`)
	recordingRef = regexp.MustCompile(`\bshortleaf:[a-z0-9_:]+`)
)

// unknownMetrics returns the metric names expr uses that are neither
// exported (a histogram's _bucket, _sum and _count included) nor recorded
// by a rule.
func unknownMetrics(expr string, names, records map[string]bool) []string {
	var out []string
	for _, m := range metricRef.FindAllString(expr, -1) {
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, suffix); ok && names[b] {
				base = b
			}
		}
		if !names[base] {
			out = append(out, m)
		}
	}
	for _, m := range recordingRef.FindAllString(expr, -1) {
		if !records[m] {
			out = append(out, m)
		}
	}
	return out
}

// Every metric an alert rule or a dashboard panel uses is one the code
// exports, every recording rule used is defined, and every alert has a
// promtool unit test (alerts_test.yml, run by make test).
func TestMonitoringUsesOnlyExportedMetrics(t *testing.T) {
	names := exported(t)
	if bad := unknownMetrics("rate(shortleaf_server_no_such_total[5m])", names, nil); len(bad) != 1 {
		t.Fatalf("the check does not catch an unknown metric: %v", bad)
	}

	raw, err := os.ReadFile(filepath.Join(monitoringDir, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules ruleFile
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	records := map[string]bool{}
	var alerts []string
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				records[r.Record] = true
			}
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			}
			exprs = append(exprs, r.Expr)
		}
	}
	if len(alerts) < 10 {
		t.Fatalf("only %d alerts read from alerts.yml", len(alerts))
	}
	for _, e := range exprs {
		if bad := unknownMetrics(e, names, records); len(bad) > 0 {
			t.Errorf("alerts.yml uses %v, which the code does not export: %s", bad, e)
		}
	}

	tests, err := os.ReadFile(filepath.Join(monitoringDir, "alerts_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if !strings.Contains(string(tests), "alertname: "+a+"\n") {
			t.Errorf("alert %s has no unit test in alerts_test.yml", a)
		}
	}

	raw, err = os.ReadFile(filepath.Join(monitoringDir, "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			if bad := unknownMetrics(tg.Expr, names, records); len(bad) > 0 {
				t.Errorf("dashboard panel %q uses %v, which the code does not export", p.Title, bad)
			}
			for _, m := range metricRef.FindAllString(tg.Expr, -1) {
				used[m] = true
			}
		}
	}
	if len(used) < 20 {
		t.Fatalf("only %d metrics read from the dashboard's panels", len(used))
	}
	var unshown []string
	for _, n := range []string{"shortleaf_agent_expired_x509_svids", "shortleaf_server_x509_svid_batch_duration_seconds_bucket",
		"shortleaf_ca_authority_not_after_timestamp_seconds", "shortleaf_server_agent_clock_skew_max_seconds", "shortleaf_audit_write_errors_total"} {
		if !used[n] {
			unshown = append(unshown, n)
		}
	}
	sort.Strings(unshown)
	if len(unshown) > 0 {
		t.Errorf("the dashboard does not show %v", unshown)
	}
}
