// Package server wires the shortleaf server: datastore, key manager and CA,
// the agent API over TLS 1.3, the admin API on a Unix socket, and the metrics
// and health endpoints.
//
//	srv, err := server.New(ctx, server.Config{TrustDomain: td, DataDir: dir})
//	defer srv.Close()
//	err = srv.Run(ctx) // until ctx is done
//
// New opens every listener before it returns, so AgentAddr and AdminSocket are
// usable at once and a port conflict fails early.
package server
