// Package x509pop is the x509pop node attestor: a node holding a
// certificate from a CA the server trusts (a corporate machine CA, say)
// proves it by presenting the chain and signing the server's fresh nonce
// with the certificate's key. The agent ID is
// spiffe://<td>/agent/x509pop/<SHA-1 fingerprint of the leaf>, as SPIRE's,
// so the same certificate always attests to the same agent, and the node
// selectors name the subject's common name, the serial number and the CA
// certificates of the chain.
package x509pop
