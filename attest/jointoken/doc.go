// Package jointoken is node attestation by single-use join token.
//
// A token reads "<id>.<secret>": the ID is public and names the agent
// (spiffe://<td>/agent/join_token/<id>), the secret proves possession. The
// server stores only SHA-256 of the secret, consumes the token on first use
// and refuses it after its expiry. Tokens never appear in logs; log the ID.
package jointoken
