// Package devmode runs a server and an agent in one process for trying
// shortleaf out: trust domain example.org, keys unencrypted (with a warning),
// the invoking user registered as spiffe://example.org/dev/<user> with
// selector unix:uid:<uid>. Everything goes through the real APIs: the agent
// attests with a join token over TLS and the registration uses the admin
// socket, exactly as separate processes would.
package devmode
