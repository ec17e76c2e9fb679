package audit

// abandon stops the writer as a crash would: what is queued is not
// written and no final checkpoint closes the log.
func (l *Log) abandon() { _ = l.stop(true) }
