// Package attest holds what every attestor shares: selectors, the facts an
// attestor proves about a node or a workload, written "type:key:value"
// (unix:uid:1000). Each attestor lives in its own sub-package behind a small
// interface: node attestation (jointoken) on the server, workload attestation
// (unix, k8s) on the agent.
package attest
