package workloadapi

import (
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// FuzzSDSRequest: no DiscoveryRequest panics the SDS request handling (type
// check, then the secrets built for its resource names), only the secret
// type URL passes, and no answer holds more secrets than names were asked.
func FuzzSDSRequest(f *testing.F) {
	for _, req := range []*discoveryv3.DiscoveryRequest{
		{TypeUrl: secretTypeURL, ResourceNames: []string{"default", "ROOTCA", "ALL", "example.org", "spiffe://example.org", "spiffe://example.org/a"}},
		{TypeUrl: "type.googleapis.com/envoy.config.cluster.v3.Cluster"},
		{ResourceNames: []string{"", "spiffe://", "spiffe://other.org"}},
	} {
		raw, _ := proto.Marshal(req)
		f.Add(raw)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	state := &State{Ready: true, TrustDomain: td}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req discoveryv3.DiscoveryRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		if checkTypeURL(&req) != nil {
			return
		}
		if req.GetTypeUrl() != "" && req.GetTypeUrl() != secretTypeURL {
			t.Fatalf("accepted type URL %q", req.GetTypeUrl())
		}
		resp, err := buildSecrets(state, nil, req.GetResourceNames(), optionsFor(req.GetNode()))
		if err != nil {
			return
		}
		if n := len(resp.GetResources()); len(req.GetResourceNames()) > 0 && n > len(req.GetResourceNames()) {
			t.Fatalf("%d secrets for %d names", n, len(req.GetResourceNames()))
		}
	})
}
