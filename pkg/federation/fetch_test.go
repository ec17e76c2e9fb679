package federation_test

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

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

// Every fetch used to leave its connection open (a transport per fetch that
// kept its idle connection); now no connection outlives its fetch. Counted
// on the endpoint's side.
func TestFetchLeavesNoConnectionOpen(t *testing.T) {
	body, err := catest.New(t).SPIFFEBundle(0).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	open := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(body) }))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		mu.Lock()
		defer mu.Unlock()
		switch st {
		case http.StateNew:
			open++
		case http.StateClosed, http.StateHijacked:
			open--
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	r := federation.Relationship{TrustDomain: td, URL: srv.URL, Profile: federation.ProfileWeb, WebRoots: []*x509.Certificate{srv.Certificate()}}
	for range 10 {
		if _, err := federation.Fetch(context.Background(), r, nil); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := open
		mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open after 10 fetches, want 0", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FuzzParsePEMCertificates: no PEM input panics the reader, and every
// certificate it returns parses on its own.
func FuzzParsePEMCertificates(f *testing.F) {
	good, _ := catest.New(f).SPIFFEBundle(0).Marshal()
	f.Add(good)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		certs, err := federation.ParsePEMCertificates(raw)
		if err != nil {
			return
		}
		for _, c := range certs {
			if _, err := x509.ParseCertificate(c.Raw); err != nil {
				t.Fatalf("returned an unparsable certificate: %v", err)
			}
		}
	})
}

// FuzzRelationshipValidate: whatever relationship validates names a trust
// domain, an https URL and, for https_spiffe, the endpoint's ID.
func FuzzRelationshipValidate(f *testing.F) {
	f.Add("other.org", "https://other.org/b", "https_web", "")
	f.Add("other.org", "https://x:8443", "https_spiffe", "spiffe://other.org/s")
	f.Add("", "http://x", "ftp", "x")
	f.Fuzz(func(t *testing.T, tdName, url, profile, endpointID string) {
		r := federation.Relationship{URL: url, Profile: profile}
		r.TrustDomain, _ = spiffeid.TrustDomainFromString(tdName)
		r.EndpointID, _ = spiffeid.FromString(endpointID)
		if r.Validate() != nil {
			return
		}
		if r.TrustDomain.IsZero() || len(url) < 9 || url[:8] != "https://" || (profile == federation.ProfileSPIFFE && r.EndpointID.IsZero()) {
			t.Fatalf("validated %+v", r)
		}
	})
}
