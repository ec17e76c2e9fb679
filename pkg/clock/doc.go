// Package clock gives long-lived loops and time-based decisions an injectable
// source of time, so tests can walk hours of renewals in milliseconds.
//
// Production code takes a Clock in its Config and defaults to Real. Tests pass
// a *Fake and move it with Add.
package clock
