// Package api implements shortleaf's gRPC services: the agent API (node
// attestation, agent SVID renewal, entry sync, batched SVID issuance) and the
// admin API (entries, join tokens, agents, bundle, minting).
//
// It translates between protos and the domain (ca, datastore, attest) and is
// the only package that chooses gRPC status codes. Every InvalidArgument names
// the field at fault; no error or log line carries a key, a token or a CSR.
package api
