// Package datastore persists what the server knows: registration entries,
// attested agents, join tokens (hashes only) and the CA journal.
//
// Bolt is the bbolt implementation, one file in the data directory with every
// write in a single transaction, so a failed call leaves nothing half-written.
// Entries are indexed by parent ID, so an agent's sync reads only its own
// entries, page by page, whatever the total.
//
//	ds, err := datastore.Open(filepath.Join(dataDir, "datastore.db"))
//	defer ds.Close()
//	e, err := ds.CreateEntry(ctx, &datastore.Entry{SPIFFEID: ..., ParentID: ..., Selectors: ...})
package datastore
