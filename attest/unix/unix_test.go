package unix_test

import (
	"os"
	"strconv"
	"testing"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/unix"
)

// The attestor, run on this very test process, finds its uid, gid, path and
// the hash of its binary, and each selector it makes validates.
func TestAttestSelf(t *testing.T) {
	a := unix.New()
	sels, err := a.Attest(unix.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]string{}
	for _, s := range sels {
		if err := s.Validate(); err != nil {
			t.Errorf("selector %s does not validate: %v", s, err)
		}
		k, v, _ := cut(s.Value)
		byKey[k] = v
	}
	if byKey["uid"] != strconv.Itoa(os.Getuid()) || byKey["gid"] != strconv.Itoa(os.Getgid()) {
		t.Errorf("uid/gid selectors = %v", byKey)
	}
	exe, _ := os.Executable()
	if byKey["path"] != exe {
		t.Errorf("path = %q, want %q", byKey["path"], exe)
	}
	if len(byKey["sha256"]) != 64 {
		t.Errorf("sha256 selector missing: %v", byKey)
	}
	// A second call hits the hash cache and agrees.
	again, _ := a.Attest(unix.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())})
	if !attest.Subset(sels, again) || !attest.Subset(again, sels) {
		t.Error("second attestation differs")
	}
}

func TestAttestGoneProcessKeepsCredentials(t *testing.T) {
	sels, err := unix.New().Attest(unix.Caller{PID: 1 << 30, UID: 4242, GID: 4243})
	if err != nil {
		t.Fatal(err)
	}
	if !attest.Subset([]attest.Selector{{Type: "unix", Value: "uid:4242"}, {Type: "unix", Value: "gid:4243"}}, sels) {
		t.Fatalf("selectors = %v", sels)
	}
	for _, s := range sels {
		if k, _, _ := cut(s.Value); k == "path" || k == "sha256" {
			t.Errorf("a vanished process got %s", s)
		}
	}
}

func cut(v string) (string, string, bool) {
	for i := range v {
		if v[i] == ':' {
			return v[:i], v[i+1:], true
		}
	}
	return v, "", false
}
