// Package ratelimit keeps one caller from taking a server's whole capacity:
// token buckets keyed by caller (a source IP, an agent ID) and refusal logs
// sampled per key, so a flood of bad requests costs a line per interval, not a
// line per request.
//
//	attest := ratelimit.New(ratelimit.Config{PerSecond: 1, Burst: 20})
//	if !attest.Allow(ip, now) {
//		return status.Error(codes.ResourceExhausted, "attestation rate limit: 1/s per source address")
//	}
//
// Both types hold a bounded number of keys, so an attacker who varies the key
// (many source addresses) cannot grow the server's memory without bound.
package ratelimit
