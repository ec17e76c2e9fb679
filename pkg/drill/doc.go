// Package drill runs the CA's real rotation logic (package ca: the schedule,
// the root schedule, the propagation gate of package api) on a simulated
// clock, with simulated agents that follow the real agent's renewal policy
// (agent.RenewAt, agent.TaintedRenewAt), and reports every transition and
// the first violation: an SVID that would not verify at some agent or
// federated consumer, a lifetime cut short, an SVID served past its expiry,
// a root that took over past its deadline or without the gate.
//
// Keys are stand-ins made in memory (ca.StandInJournal), so a drill of a
// production journal never touches its keys. `shortleaf ca drill` is the
// operator's entry point; the 30-day and root-lifetime simulations in
// package ca's tests are drills with scripted admin operations.
//
//	report, err := drill.Run(ctx, drill.Config{CA: caCfg, Journal: raw, Duration: 400 * 24 * time.Hour, FastForward: true})
package drill
