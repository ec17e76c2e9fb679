// Package audit is the server's tamper-evident audit log: who got which
// certificate, when, from which agent, and who changed what.
//
// Each record carries the hash of the one before it, so altering, removing
// or reordering any record breaks the chain at that point. Records are
// queued by the request path and written by one goroutine in batches, one
// write and fsync per batch (group commit); a request that hands out a
// certificate waits for its record to be durable, not for its own fsync.
//
// The log is a set of JSON Lines files in one directory, each named by the
// sequence number of its first record; a new file starts when the current
// one is large or old, and the chain goes on across files. Retention removes
// the oldest files, but first records what it removes, with the removed
// file's last hash, so a verifier tells retention from deletion. Every
// CheckpointInterval the CA signs the chain's head (a checkpoint record, and
// a log line that a log collector keeps as a witness); a checkpoint marked
// final is written at close, so a log cut back is detected too.
//
// Verify checks a directory; Query reads it with filters. Several replicas
// each keep their own chain in their own data dir.
package audit
