// Package workloadapi serves the SPIFFE Workload API on the agent's Unix
// socket, with the proto that go-spiffe ships, so any go-spiffe client,
// spiffe-helper or ghostunnel works unchanged.
//
// The server knows nothing of how SVIDs are obtained. It reads immutable
// snapshots from a Source, attests each caller with an Attestor (from the
// socket's peer credentials) and gives it every identity whose selectors are
// all among the caller's. Streams send the full state at once and again on
// every change the Source signals.
package workloadapi
