// Package entryfeed fans the datastore's entry changes out to the agents
// connected to this server.
//
// One Feed per server watches the datastore (an etcd watch shared by the
// whole replica, or a bbolt store's own writes), keeps the latest changes in
// memory, and routes each change to the subscriptions of the agents it
// concerns: the entry's parent, and its former parent when an update moved
// it. An agent that reconnects with the revision it holds gets the changes
// it missed from that memory; one further behind than the memory reaches is
// told so (Subscribe's ok is false) and the caller reads its entries afresh.
// A subscriber too slow to keep up is dropped the same way (Lost), never
// allowed to hold up the others.
package entryfeed
