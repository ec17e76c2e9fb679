package federation_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca/catest"
	"github.com/shortleaf/shortleaf/pkg/federation"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestParseChecksTheBundle(t *testing.T) {
	good, err := catest.New(t).SPIFFEBundle(0).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := federation.Parse(td, good); err != nil {
		t.Fatalf("good bundle: %v", err)
	}
	// The same bundle claimed for another trust domain: its roots name example.org.
	if _, err := federation.Parse(spiffeid.RequireTrustDomainFromString("other.org"), good); err == nil || !strings.Contains(err.Error(), "example.org") {
		t.Fatalf("bundle of another trust domain: %v", err)
	}
	for name, raw := range map[string]string{
		"not JSON":  "nope",
		"no keys":   `{"keys":[]}`,
		"bad x5c":   `{"keys":[{"use":"x509-svid","kty":"EC","x5c":["AAAA"]}]}`,
		"oversized": `{"keys":[],"pad":"` + strings.Repeat("a", federation.MaxBundleSize) + `"}`,
	} {
		if _, err := federation.Parse(td, []byte(raw)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRelationshipValidate(t *testing.T) {
	ok := federation.Relationship{TrustDomain: td, URL: "https://b.example.org", Profile: federation.ProfileWeb}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, r := range map[string]federation.Relationship{
		"bundle_endpoint_url": {TrustDomain: td, URL: "http://b", Profile: federation.ProfileWeb},
		"profile":             {TrustDomain: td, URL: "https://b", Profile: "tls"},
		"endpoint_spiffe_id":  {TrustDomain: td, URL: "https://b", Profile: federation.ProfileSPIFFE},
		"trust_domain":        {URL: "https://b", Profile: federation.ProfileWeb},
	} {
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v", field, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	good, _ := catest.New(f).SPIFFEBundle(0).Marshal()
	f.Add(good)
	f.Add([]byte(`{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k","crv":"P-256","x":"AA","y":"AA"}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := federation.Parse(td, raw)
		if err != nil {
			return
		}
		if len(b.X509Authorities()) == 0 && len(b.JWTAuthorities()) == 0 {
			t.Fatal("accepted a bundle without keys")
		}
		for _, c := range b.X509Authorities() {
			if !c.IsCA {
				t.Fatal("accepted a non-CA X.509 authority")
			}
		}
	})
}
