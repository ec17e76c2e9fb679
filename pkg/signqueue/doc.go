// Package signqueue is the server's admission control for X.509-SVID
// signing. Every agent's CSRs wait in one bounded queue and a fixed set of
// workers signs them, most urgent first: the CSR whose current SVID expires
// soonest (or that has none) goes before one with time to spare.
//
// When the queue is full the least urgent work is shed, not the newest: a
// CSR more urgent than the least urgent one waiting takes its place. Among
// CSRs as urgent, each agent is owed its fair share of a full queue (the
// capacity divided among the agents with work waiting): one under its share
// takes the place of one whose agent is over, so one agent's storm cannot
// crowd out the others. Shed work is answered at once with a retry-after hint (the
// time the queue needs to drain), never left to time out; work whose caller
// has gone is dropped before it is signed.
//
//	q := signqueue.New(signqueue.Config{Capacity: 4096, MaxWait: 10 * time.Second})
//	defer q.Close()
//	jobs := []*signqueue.Job{{Urgency: notAfter, Run: sign}}
//	q.Do(ctx, agentID, jobs)
//	for _, j := range jobs {
//		if shed := j.Shed(); shed != nil { ... shed.RetryAfter ... }
//	}
package signqueue
