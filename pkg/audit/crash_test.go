package audit

// abandon stops the writer as a crash would: what is queued is not
// written and no final checkpoint closes the log.
func (l *Log) abandon() {
	l.mu.Lock()
	l.closing, l.crashed = true, true
	l.signalSpaceLocked()
	close(l.closed)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	<-l.done
}
