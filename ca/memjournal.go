package ca

import (
	"context"
	"sync"
)

// MemoryJournal keeps the journal in memory: for tests and for `ca drill`,
// which must never write the real one.
type MemoryJournal struct {
	mu  sync.Mutex
	rec []byte
}

// LoadCAJournal implements Journal.
func (j *MemoryJournal) LoadCAJournal(context.Context) ([]byte, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rec, nil
}

// SaveCAJournal implements Journal.
func (j *MemoryJournal) SaveCAJournal(_ context.Context, rec []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.rec = append([]byte(nil), rec...)
	return nil
}
