package attest_test

import (
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/attest"
)

func TestParseSelector(t *testing.T) {
	good := []string{"unix:uid:0", "unix:gid:1000", "unix:user:www-data", "unix:group:staff", "unix:path:/usr/bin/app",
		"unix:sha256:" + strings.Repeat("ab", 32), "join_token:id:0123abcd",
		"k8s:ns:payments", "k8s:sa:web", "k8s:pod-name:web-7f9c6d5b8-x2k4q", "k8s:pod-uid:7d4a2d5b-0c1e-4b7a-9d1e-3a6f1b2c4d5e",
		"k8s:node-name:node-3.internal", "k8s:pod-label:app.kubernetes.io/name:web", "k8s:pod-label:tier:", "k8s:container-name:app",
		"k8s:container-image:registry.internal/web@sha256:" + strings.Repeat("ab", 32)}
	for _, s := range good {
		sel, err := attest.ParseSelector(s)
		if err != nil {
			t.Errorf("%s: %v", s, err)
			continue
		}
		if sel.String() != s {
			t.Errorf("round trip %s -> %s", s, sel)
		}
	}
	bad := map[string]string{
		"":                        "type:key:value",
		"unix":                    "type:key:value",
		"docker:label:x":          "unknown type",
		"k8s:ns:Default":          "malformed",
		"k8s:pod-uid:1234":        "malformed",
		"unix:pid:1":              "unknown key",
		"unix:uid:-1":             "malformed",
		"unix:uid":                "type:key:value",
		"unix:path:relative/path": "malformed",
		"unix:sha256:ABCD":        "malformed",
		"unix:path:/" + strings.Repeat("a", 5000): "longer than",
	}
	for s, want := range bad {
		if _, err := attest.ParseSelector(s); err == nil || !strings.Contains(err.Error(), want) || len(err.Error()) > 200 {
			t.Errorf("%.30q: error %.300v, want one line saying %q", s, err, want)
		}
	}
}

func TestSubset(t *testing.T) {
	uid := attest.Selector{Type: "unix", Value: "uid:1"}
	gid := attest.Selector{Type: "unix", Value: "gid:1"}
	if !attest.Subset([]attest.Selector{uid}, []attest.Selector{uid, gid}) {
		t.Error("uid should be a subset of uid+gid")
	}
	if attest.Subset([]attest.Selector{uid, gid}, []attest.Selector{uid}) {
		t.Error("uid+gid is not a subset of uid")
	}
	if attest.Subset(nil, []attest.Selector{uid}) {
		t.Error("an entry without selectors must match nothing")
	}
}

func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"unix:uid:1000", "unix:path:/bin/sh", "join_token:id:ab", "a:b:c", "::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := attest.ParseSelector(s)
		if err != nil {
			return
		}
		if sel.String() != s {
			t.Fatalf("accepted %q but prints %q", s, sel)
		}
		if err := sel.Validate(); err != nil {
			t.Fatalf("accepted %q that does not validate: %v", s, err)
		}
	})
}
