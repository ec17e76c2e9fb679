package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func fakeLookup(names map[string][]string) func(context.Context, string) ([]string, error) {
	return func(_ context.Context, host string) ([]string, error) {
		if ips, ok := names[host]; ok {
			return ips, nil
		}
		return nil, errors.New("no such host " + host)
	}
}

// Every address of every entry is offered: IP literals as they are, and
// each address a DNS name resolves to (with the name kept for TLS); an
// entry that does not resolve is skipped while others give addresses.
func TestServerAddressesResolveEveryReplica(t *testing.T) {
	s := newServerAddrs([]string{"servers.internal:8081", "10.0.0.9:8081", "gone.internal:8081"})
	s.lookupHost = fakeLookup(map[string][]string{"servers.internal": {"10.0.0.1", "10.0.0.2", "fd00::3"}})
	addrs, err := s.resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.Addr+" "+a.ServerName)
	}
	slices.Sort(got)
	want := []string{"10.0.0.1:8081 servers.internal", "10.0.0.2:8081 servers.internal", "10.0.0.9:8081 ", "[fd00::3]:8081 servers.internal"}
	if !slices.Equal(got, want) {
		t.Fatalf("resolved %q, want %q", got, want)
	}

	s.addrs = []string{"gone.internal:8081"}
	if _, err := s.resolve(context.Background()); err == nil || !strings.Contains(err.Error(), "gone.internal") {
		t.Fatalf("nothing resolves: %v, want an error naming the address", err)
	}
}

// Each resolution comes in a new random order, so agents reconnecting
// after a connection ends spread over the replicas.
func TestServerAddressesAreShuffledEachTime(t *testing.T) {
	s := newServerAddrs([]string{"10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"})
	first := map[string]int{}
	for range 300 {
		addrs, err := s.resolve(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		first[addrs[0].Addr]++
	}
	// Each is first about 100 times; fewer than 50 has odds below 1e-9.
	for _, a := range s.addrs {
		if first[a] < 50 {
			t.Fatalf("first addresses over 300 resolutions: %v", first)
		}
	}
}
