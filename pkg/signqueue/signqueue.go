package signqueue

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Defaults.
const (
	// DefaultCapacity bounds the CSRs waiting. At a few thousand signatures
	// a second per core it is well under a second of work: enough to keep
	// the workers busy between batches, small enough that nothing waits
	// long.
	DefaultCapacity = 4096
	// DefaultMaxWait is the longest a CSR may wait for a worker. Agents give
	// a call 30 s; work older than this is shed with a hint, so its caller
	// hears back well before it would give up.
	DefaultMaxWait = 10 * time.Second
	// minRetryAfter is the shortest retry-after hint given.
	minRetryAfter = 250 * time.Millisecond
)

// Why work was shed: the values of the shed counter's reason label.
const (
	// ReasonFull: the queue was full of work at least as urgent.
	ReasonFull = "queue_full"
	// ReasonFairShare: the queue was full and the caller already had its
	// share of it.
	ReasonFairShare = "fair_share"
	// ReasonDisplaced: more urgent work took its place in a full queue.
	ReasonDisplaced = "displaced"
	// ReasonTooLate: it waited longer than MaxWait.
	ReasonTooLate = "too_late"
	// ReasonCallerGone: its caller cancelled or timed out before a worker
	// reached it; it is dropped unsigned.
	ReasonCallerGone = "caller_gone"
	// ReasonClosed: the server is stopping.
	ReasonClosed = "closed"
)

// Reasons lists every shed reason, for counters that start at 0.
var Reasons = []string{ReasonFull, ReasonFairShare, ReasonDisplaced, ReasonTooLate, ReasonCallerGone, ReasonClosed}

// Config configures a Queue. Zero fields take the defaults.
type Config struct {
	// Capacity bounds the jobs waiting (DefaultCapacity). The bound the
	// queue applies is lower when the measured signing rate would not
	// drain a full queue within MaxWait.
	Capacity int
	// MaxWait is the longest a job may wait for a worker (DefaultMaxWait).
	MaxWait time.Duration
	// Workers is how many jobs run at once (GOMAXPROCS).
	Workers int
	// PerSecond caps the jobs run per second across all workers, for a
	// signer with a quota (an HSM or a cloud KMS); 0: no cap.
	PerSecond float64
	// Wait observes each job's time in the queue before it ran; optional.
	Wait prometheus.Observer
	// Shed counts shed jobs by reason; optional.
	Shed *prometheus.CounterVec
}

// Job is one unit of work (one CSR to check and sign).
type Job struct {
	// Urgency orders the queue: the earliest first. For a CSR it is the
	// NotAfter of the SVID it replaces; the zero time (no SVID held) is the
	// most urgent of all.
	Urgency time.Time
	// Run does the work on a worker.
	Run func()

	b          *batch
	seq        uint64
	enqueued   time.Time
	pendingIdx int
	victimIdx  int
	callerIdx  int
	shed       *Shed
}

// Shed reports why the job was not run; nil once it ran. Read it only after
// Do returned.
func (j *Job) Shed() *Shed { return j.shed }

// Shed is why a job was not run and when to ask again.
type Shed struct {
	Reason     string
	RetryAfter time.Duration
}

func (s *Shed) Error() string {
	return fmt.Sprintf("signing queue: shed (%s); retry after %s", s.Reason, s.RetryAfter.Round(time.Millisecond))
}

// batch is one Do call: its jobs finish together.
type batch struct {
	ctx    context.Context
	caller string
	jobs   []*Job
	left   int // admitted jobs not yet finished; guarded by Queue.mu
	done   chan struct{}
}

// Queue is a bounded, urgency-ordered signing queue with its workers.
type Queue struct {
	cfg     Config
	limiter *rate.Limiter
	stop    context.CancelFunc
	stopCtx context.Context
	wg      sync.WaitGroup

	mu        sync.Mutex
	work      *sync.Cond
	pending   *jobHeap            // most urgent first: what workers take
	victims   *jobHeap            // least urgent first: what a full queue sheds
	perCaller map[string]*jobHeap // each caller's waiting jobs, least urgent first
	seq       uint64
	closed    bool
	// service is a moving average of one job's run time, for the signing
	// rate that sizes the queue and the retry hints; 0 until a job ran.
	service time.Duration
}

// New starts a queue and its workers; Close stops them.
func New(cfg Config) *Queue {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	q := &Queue{cfg: cfg, perCaller: map[string]*jobHeap{},
		pending: &jobHeap{less: mostUrgentFirst, place: func(j *Job) *int { return &j.pendingIdx }},
		victims: &jobHeap{less: leastUrgentFirst, place: func(j *Job) *int { return &j.victimIdx }}}
	q.work = sync.NewCond(&q.mu)
	q.stopCtx, q.stop = context.WithCancel(context.Background())
	if cfg.PerSecond > 0 {
		q.limiter = rate.NewLimiter(rate.Limit(cfg.PerSecond), max(1, cfg.Workers))
	}
	for range cfg.Workers {
		q.wg.Add(1)
		go q.worker()
	}
	return q
}

// Close sheds the jobs still waiting and stops the workers once the running
// ones are done.
func (q *Queue) Close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	for q.pending.Len() > 0 {
		j := q.pending.jobs[0]
		q.removeLocked(j)
		q.shedLocked(j, ReasonClosed, 0)
		q.finishLocked(j)
	}
	q.work.Broadcast()
	q.mu.Unlock()
	q.stop()
	q.wg.Wait()
}

// Len is the number of jobs waiting.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pending.Len()
}

// Busy reports whether the queue is at least half full: callers should
// start their next renewals early, while there is time to retry.
func (q *Queue) Busy() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return 2*q.pending.Len() >= q.limitLocked()
}

// Do admits caller's jobs (the most urgent first, within the queue's bound
// and, once it is full, the caller's fair share), waits until every admitted job ran or was
// shed, and returns. Jobs not admitted are shed at once with a retry hint.
// If ctx ends first, the caller's waiting jobs are dropped; Do still waits
// for those already running, so a job's Run never outlives Do.
func (q *Queue) Do(ctx context.Context, caller string, jobs []*Job) {
	if len(jobs) == 0 {
		return
	}
	order := slices.Clone(jobs)
	slices.SortStableFunc(order, func(a, b *Job) int { return a.Urgency.Compare(b.Urgency) })
	// left starts at 1, held until admission is over, so the batch cannot
	// look finished while its jobs are still being admitted.
	b := &batch{ctx: ctx, caller: caller, jobs: jobs, left: 1, done: make(chan struct{})}
	now := time.Now()

	q.mu.Lock()
	limit := q.limitLocked()
	share := q.shareLocked(caller, limit)
	retry := q.retryAfterLocked()
	for _, j := range order {
		*j = Job{Urgency: j.Urgency, Run: j.Run, b: b, pendingIdx: -1, victimIdx: -1, callerIdx: -1}
		if q.closed {
			q.shedLocked(j, ReasonClosed, 0)
			continue
		}
		if q.pending.Len() < limit {
			q.pushLocked(j, now)
			continue
		}
		// Full: the least urgent job waiting makes room for a more urgent
		// one; or, for one as urgent from a caller under its share, the
		// least urgent job of the caller with the most waiting, if that
		// caller is over its share and the job is no more urgent.
		if v := q.victims.jobs[0]; j.Urgency.Before(v.Urgency) {
			q.displaceLocked(v, retry)
			q.pushLocked(j, now)
			continue
		}
		mine := q.waitingLocked(caller)
		if mine < share {
			if v := q.fairVictimLocked(share); v != nil && !v.Urgency.Before(j.Urgency) {
				q.displaceLocked(v, retry)
				q.pushLocked(j, now)
				continue
			}
			q.shedLocked(j, ReasonFull, retry)
			continue
		}
		q.shedLocked(j, ReasonFairShare, retry)
	}
	admitted := b.left > 1
	if admitted {
		q.work.Broadcast()
	}
	q.finishLocked(&Job{b: b}) // the hold
	q.mu.Unlock()
	if !admitted {
		return
	}

	select {
	case <-b.done:
		return
	case <-ctx.Done():
	}
	q.mu.Lock()
	for _, j := range b.jobs {
		if q.isPendingLocked(j) {
			q.removeLocked(j)
			q.shedLocked(j, ReasonCallerGone, 0)
			q.finishLocked(j)
		}
	}
	q.mu.Unlock()
	<-b.done
}

func (q *Queue) worker() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		for q.pending.Len() == 0 && !q.closed {
			q.work.Wait()
		}
		if q.closed && q.pending.Len() == 0 {
			q.mu.Unlock()
			return
		}
		j := q.pending.jobs[0]
		q.removeLocked(j)
		q.mu.Unlock()

		reason := ""
		waited := time.Since(j.enqueued)
		switch {
		case j.b.ctx.Err() != nil:
			reason = ReasonCallerGone
		case waited > q.cfg.MaxWait:
			reason = ReasonTooLate
		case q.limiter != nil:
			if err := q.limiter.Wait(j.b.ctx); err != nil {
				reason = ReasonCallerGone
			}
		}
		if reason != "" {
			q.mu.Lock()
			q.shedLocked(j, reason, q.retryAfterLocked())
			q.finishLocked(j)
			q.mu.Unlock()
			continue
		}
		if q.cfg.Wait != nil {
			q.cfg.Wait.Observe(time.Since(j.enqueued).Seconds())
		}
		start := time.Now()
		j.Run()
		took := time.Since(start)
		q.mu.Lock()
		if q.service == 0 {
			q.service = took
		} else {
			q.service = (9*q.service + took) / 10
		}
		q.finishLocked(j)
		q.mu.Unlock()
	}
}

// rateLocked is the jobs per second the workers sustain: measured, and
// capped by PerSecond; 0 while nothing has been measured.
func (q *Queue) rateLocked() float64 {
	r := 0.0
	if q.service > 0 {
		r = float64(q.cfg.Workers) / q.service.Seconds()
	}
	if q.cfg.PerSecond > 0 && (r == 0 || q.cfg.PerSecond < r) {
		r = q.cfg.PerSecond
	}
	return r
}

// limitLocked is how many jobs may wait: Capacity, or fewer when the
// signing rate would not drain them within MaxWait.
func (q *Queue) limitLocked() int {
	limit := q.cfg.Capacity
	if r := q.rateLocked(); r > 0 {
		drainable := r * q.cfg.MaxWait.Seconds()
		if drainable < float64(limit) {
			limit = max(int(drainable), q.cfg.Workers)
		}
	}
	return limit
}

// shareLocked is a caller's fair share of a full queue: the limit divided
// among the callers with work waiting, caller included.
func (q *Queue) shareLocked(caller string, limit int) int {
	callers := len(q.perCaller)
	if _, ok := q.perCaller[caller]; !ok {
		callers++
	}
	return max(1, limit/callers)
}

// RetryAfter is the hint for work shed now: when the queue will be down to
// half its bound, so that work coming back finds room while the workers
// still have the other half to do (a hint of the whole drain time would
// leave them idle until it returns).
func (q *Queue) RetryAfter() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.retryAfterLocked()
}

// retryAfterLocked is RetryAfter, within [minRetryAfter, MaxWait].
func (q *Queue) retryAfterLocked() time.Duration {
	d := q.cfg.MaxWait
	if r := q.rateLocked(); r > 0 {
		excess := max(0, q.pending.Len()-q.limitLocked()/2)
		d = time.Duration(math.Ceil(float64(excess) / r * float64(time.Second)))
	}
	return min(max(d, minRetryAfter), q.cfg.MaxWait)
}

func (q *Queue) pushLocked(j *Job, now time.Time) {
	q.seq++
	j.seq, j.enqueued = q.seq, now
	heap.Push(q.pending, j)
	heap.Push(q.victims, j)
	ch := q.perCaller[j.b.caller]
	if ch == nil {
		ch = &jobHeap{less: leastUrgentFirst, place: func(j *Job) *int { return &j.callerIdx }}
		q.perCaller[j.b.caller] = ch
	}
	heap.Push(ch, j)
	j.b.left++
}

func (q *Queue) waitingLocked(caller string) int {
	if ch := q.perCaller[caller]; ch != nil {
		return ch.Len()
	}
	return 0
}

// fairVictimLocked is the least urgent job of the caller with the most jobs
// waiting, when that caller is over share; nil otherwise. It looks at every
// caller with work waiting, but only when a full queue must choose between
// callers' equally urgent work.
func (q *Queue) fairVictimLocked(share int) *Job {
	var biggest *jobHeap
	for _, ch := range q.perCaller {
		if biggest == nil || ch.Len() > biggest.Len() {
			biggest = ch
		}
	}
	if biggest == nil || biggest.Len() <= share {
		return nil
	}
	return biggest.jobs[0]
}

// displaceLocked sheds a waiting job to make room for another.
func (q *Queue) displaceLocked(v *Job, retry time.Duration) {
	q.removeLocked(v)
	q.shedLocked(v, ReasonDisplaced, retry)
	q.finishLocked(v)
}

func (q *Queue) isPendingLocked(j *Job) bool {
	return j.pendingIdx >= 0 && j.pendingIdx < q.pending.Len() && q.pending.jobs[j.pendingIdx] == j
}

// removeLocked takes a waiting job out of the queue.
func (q *Queue) removeLocked(j *Job) {
	heap.Remove(q.pending, j.pendingIdx)
	heap.Remove(q.victims, j.victimIdx)
	ch := q.perCaller[j.b.caller]
	heap.Remove(ch, j.callerIdx)
	if ch.Len() == 0 {
		delete(q.perCaller, j.b.caller)
	}
	j.pendingIdx, j.victimIdx, j.callerIdx = -1, -1, -1
}

func (q *Queue) shedLocked(j *Job, reason string, retry time.Duration) {
	j.shed = &Shed{Reason: reason, RetryAfter: retry}
	if q.cfg.Shed != nil {
		q.cfg.Shed.WithLabelValues(reason).Inc()
	}
}

// finishLocked marks an admitted job done and wakes its caller when it was
// the batch's last.
func (q *Queue) finishLocked(j *Job) {
	j.b.left--
	if j.b.left == 0 {
		close(j.b.done)
	}
}

// jobHeap is a heap of jobs under one order (container/heap); each job
// keeps its place in it, in the field place points to, so it can be
// removed from the middle.
type jobHeap struct {
	jobs  []*Job
	less  func(a, b *Job) bool
	place func(*Job) *int
}

func (h *jobHeap) Len() int           { return len(h.jobs) }
func (h *jobHeap) Less(a, b int) bool { return h.less(h.jobs[a], h.jobs[b]) }
func (h *jobHeap) Swap(a, b int) {
	h.jobs[a], h.jobs[b] = h.jobs[b], h.jobs[a]
	*h.place(h.jobs[a]), *h.place(h.jobs[b]) = a, b
}
func (h *jobHeap) Push(x any) {
	j := x.(*Job)
	*h.place(j) = len(h.jobs)
	h.jobs = append(h.jobs, j)
}
func (h *jobHeap) Pop() any {
	j := h.jobs[len(h.jobs)-1]
	h.jobs[len(h.jobs)-1] = nil
	h.jobs = h.jobs[:len(h.jobs)-1]
	return j
}

// mostUrgentFirst orders the workers' heap: most urgent, then first come.
func mostUrgentFirst(a, b *Job) bool {
	if c := a.Urgency.Compare(b.Urgency); c != 0 {
		return c < 0
	}
	return a.seq < b.seq
}

// leastUrgentFirst orders the heaps of what to shed: least urgent, then
// last come.
func leastUrgentFirst(a, b *Job) bool { return mostUrgentFirst(b, a) }
