// Package harness starts real shortleaf servers and agents inside a test, in
// a line or two: real bbolt files, real TCP+TLS, real Unix sockets. Each part
// is stopped and its files removed when the test ends.
//
//	srv := harness.StartServer(t)
//	ag := harness.StartAgent(t, srv)
//	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: ..., ParentId: ag.ID(), Selectors: ...})
//	client, _ := workloadapi.New(ctx, workloadapi.WithAddr(ag.Addr()))
package harness
