// Package agent is the node agent: it attests to the server with a join
// token, keeps its agent SVID renewed, syncs the entries authorized for it,
// obtains an X.509-SVID for each (keys generated here, never sent), renews
// them at half-life with jitter, and serves them on the SPIFFE Workload API.
//
//	a, err := agent.New(ctx, agent.Config{ServerAddrs: []string{addr}, TrustDomain: td, DataDir: dir, JoinToken: tok})
//	defer a.Close()
//	err = a.Run(ctx)
//
// While the server is unreachable the agent keeps serving what it has and
// retries with exponential backoff and jitter. Its key, SVID and bundle are
// kept in DataDir (0600), so a restart needs no new join token. What no
// retry can cure (a refused token, a bundle that does not verify the server,
// another trust domain, an eviction with no unused token) ends Run with a
// *PermanentError; given a join token not yet used, an evicted or unusable
// stored identity is replaced by attesting again. DataDir is locked while
// the agent runs, and a socket another process answers on is refused.
package agent
