// Package k8spsat is the Kubernetes projected service-account token node
// attestor (SPIRE's k8s_psat). The agent runs as a DaemonSet pod and sends
// the token Kubernetes projected into it for the server's audience; the
// server validates it with the cluster's TokenReview API (and reads the
// pod and its node for the node's UID and labels), or offline against the
// cluster's service-account issuer keys (a JWKS file, or OIDC discovery),
// taking the pod and node from the token's claims. Only the service
// accounts allowed for the cluster may attest. The agent ID is
// spiffe://<td>/agent/k8s_psat/<cluster>/<node UID>: one agent per node,
// whichever pod it runs in.
//
// A PSAT is a bearer token: it proves that the caller holds a token the
// cluster issued to the agent's pod, not that the caller is that pod. Its
// audience, short life and the binding to a live pod (checked online) are
// what limit a stolen token; see docs/attestation.md.
package k8spsat
