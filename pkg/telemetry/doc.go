// Package telemetry defines shortleaf's Prometheus metrics and the HTTP
// handler that serves them with /healthz and /readyz.
//
// Metric names follow shortleaf_<component>_<what>_<unit>, counters end in
// _total, and no label ever carries a per-SVID or per-token value.
package telemetry
