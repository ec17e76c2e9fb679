package telemetry_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shortleaf/shortleaf/pkg/telemetry"
)

// An alert on a refusal or a denial must read 0 before the first one, not
// "no data": every labelled counter is exported from the start.
func TestCountersExistFromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	telemetry.NewServer(reg)
	telemetry.NewAgent(reg, nil)
	want := map[string]int{
		"shortleaf_server_x509_svids_issued_total":    len(telemetry.Results),
		"shortleaf_server_agent_svid_renewals_total":  len(telemetry.Results),
		"shortleaf_server_agent_attestations_total":   len(telemetry.Results) * len(telemetry.NodeAttestors),
		"shortleaf_server_requests_refused_total":     len(telemetry.RefusalReasons),
		"shortleaf_agent_workload_api_requests_total": 3 * len(telemetry.WorkloadAPIMethods),
		"shortleaf_agent_x509_svid_renewals_total":    len(telemetry.RenewalCauses),
		"shortleaf_agent_workload_api_refused_total":  1,
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			if v := m.GetCounter().GetValue(); v != 0 {
				t.Errorf("%s{%s} = %v at start", f.GetName(), strings.Join(labels, ","), v)
			}
			got[f.GetName()] = append(got[f.GetName()], strings.Join(labels, ","))
		}
	}
	for name, n := range want {
		if len(got[name]) != n {
			t.Errorf("%s: %d series at start, want %d: %v", name, len(got[name]), n, got[name])
		}
	}
	if !slices.Contains(got["shortleaf_server_agent_svid_renewals_total"], "result=denied") {
		t.Errorf("no denied renewal series: %v", got["shortleaf_server_agent_svid_renewals_total"])
	}
}
