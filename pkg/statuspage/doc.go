// Package statuspage serves the server's read-only status page: the CA's
// keys on a time axis with their states and next scheduled transitions,
// the last hour of issuance, the agents (last seen, bundle held, agent SVID
// expiry, clock skew) and the federated trust domains.
//
// The page is rendered on the server from html/template, with its
// stylesheet embedded in the binary (no CDN, no script); it reloads itself.
// It reads only public or operational state: no key, token or credential
// is among its inputs. The server serves it on its own listen address,
// off unless status_address is set.
package statuspage
