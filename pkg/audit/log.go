package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/safefile"
)

// Signer signs checkpoints: the server's CA with its active intermediate.
type Signer interface {
	// SignDetached signs msg and returns the signature and the chain that
	// verifies it, signer first.
	SignDetached(msg []byte) ([]byte, []*x509.Certificate, error)
}

// Config configures a Log. Zero values take the defaults.
type Config struct {
	Dir     string
	Replica string
	// MaxFileSize and MaxFileAge start a new file when the current one is
	// this large or its first record this old.
	MaxFileSize int64
	MaxFileAge  time.Duration
	// MaxTotalSize and MaxAge remove the oldest files (never the current
	// one) when all files together are larger, or a file's last record is
	// older. A record of the removal stays in the chain.
	MaxTotalSize int64
	MaxAge       time.Duration
	// CheckpointInterval is how often the head is signed.
	CheckpointInterval time.Duration
	// QueueSize bounds the records waiting to be written; Append blocks
	// beyond it, so no record is ever dropped.
	QueueSize int
	Signer    Signer
	// FileHeader, when set, gives a record written first in every file
	// (the server's trust bundle), so each file carries what verifying
	// its checkpoints needs; false: none now.
	FileHeader func() (Record, bool)
	Clock      clock.Clock
	Logger     *slog.Logger

	// maxBatch bounds the records of one write (default 1024; tests lower it).
	maxBatch int
}

// Defaults.
const (
	DefaultMaxFileSize        = 64 << 20
	DefaultMaxFileAge         = 24 * time.Hour
	DefaultMaxTotalSize       = 1 << 30
	DefaultMaxAge             = 90 * 24 * time.Hour
	DefaultCheckpointInterval = time.Minute
	defaultQueueSize          = 1 << 16
	// writeRetry is how long the writer waits after a failed write.
	writeRetry = time.Second
	// flushDelay is the longest a record nobody waits for stays unwritten
	// (real time: it bounds what a crash can lose, not a logical delay).
	flushDelay = 20 * time.Millisecond
)

func (c *Config) applyDefaults() {
	if c.MaxFileSize <= 0 {
		c.MaxFileSize = DefaultMaxFileSize
	}
	if c.MaxFileAge <= 0 {
		c.MaxFileAge = DefaultMaxFileAge
	}
	if c.MaxTotalSize <= 0 {
		c.MaxTotalSize = DefaultMaxTotalSize
	}
	if c.MaxAge <= 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.maxBatch <= 0 {
		c.maxBatch = 1024
	}
	if c.QueueSize <= 0 {
		c.QueueSize = defaultQueueSize
	}
	if c.Clock == nil {
		c.Clock = clock.Real
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Log is one replica's append-only, hash-chained audit log: a set of files
// in Dir, each named by the sequence number of its first record. Records
// are written by one goroutine, many per write and fsync (group commit), so
// callers only queue them.
type Log struct {
	cfg Config

	mu      sync.Mutex
	pending []Record
	// queued counts records ever queued, durable those written and fsynced;
	// a caller waits for durable to pass its record's number. waitFor is
	// the highest number a caller waits for: while it is above durable the
	// writer commits at once, otherwise it lets records gather (up to
	// flushDelay or maxBatch), so that issuance pays one fsync per batch of
	// CSRs rather than one per record.
	queued, durable, waitFor uint64
	committed                chan struct{} // closed and replaced at each commit
	space                    chan struct{} // closed and replaced when the queue drains
	wake                     chan struct{}
	// closed is closed by Close, so that a writer waiting to retry a
	// failed write gives up after one more try.
	closed  chan struct{}
	failure error // the last write error, nil once a write succeeds
	closing bool
	// crashed stops the writer as a crash would: no final checkpoint (tests).
	crashed bool

	// Writer state, owned by run.
	file      *os.File
	fileName  string
	fileSize  int64
	fileStart time.Time
	seq       uint64
	head      string
	spare     []Record
	buf       bytes.Buffer

	done   chan struct{}
	stats  Stats
	statMu sync.Mutex
}

// Stats are the log's counters, for metrics.
type Stats struct {
	Records        uint64
	Commits        uint64
	WriteErrors    uint64
	Head           uint64
	LastCheckpoint time.Time
}

// Open opens the log in cfg.Dir (created mode 0700), finds the chain's
// head, and starts the writer. A torn last line (a crash in mid-write) is
// cut off and recorded in the audit.opened record.
func Open(cfg Config) (*Log, error) {
	cfg.applyDefaults()
	if cfg.Dir == "" {
		return nil, errors.New("audit: dir is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	if err := safefile.CheckPrivateDir(cfg.Dir); err != nil {
		return nil, fmt.Errorf("audit: dir: %w", err)
	}
	l := &Log{cfg: cfg, committed: make(chan struct{}), space: make(chan struct{}), wake: make(chan struct{}, 1), closed: make(chan struct{}),
		done: make(chan struct{}), head: genesis}
	opened := Record{Time: cfg.Clock.Now(), Actor: ActorServer, Action: ActionLogOpened, Result: ResultOK, Details: map[string]string{}}
	if err := l.resume(opened.Details); err != nil {
		return nil, err
	}
	l.pending = append(l.pending, opened)
	l.queued = 1
	// The first timer is set before the writer starts, so a fake clock
	// moved right after Open fires it.
	go l.run(cfg.Clock.After(cfg.CheckpointInterval))
	return l, nil
}

// resume opens the newest file for appending and reads the chain's head
// from its last record.
func (l *Log) resume(notes map[string]string) error {
	files, err := listFiles(l.cfg.Dir)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return nil
	}
	last := files[len(files)-1]
	path := filepath.Join(l.cfg.Dir, last.name)
	f, err := os.OpenFile(path, os.O_RDWR, 0o600) //nolint:gosec // a file of the audit dir
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	tail, size, err := lastLine(f)
	if err != nil {
		_ = f.Close()
		return err
	}
	if tail.torn > 0 {
		if err := f.Truncate(size); err != nil {
			_ = f.Close()
			return fmt.Errorf("audit: cut torn record: %w", err)
		}
		notes["torn_bytes_cut"] = fmt.Sprint(tail.torn)
	}
	l.file, l.fileName, l.fileSize, l.fileStart = f, last.name, size, l.cfg.Clock.Now()
	if _, err := f.Seek(size, io.SeekStart); err != nil {
		_ = f.Close()
		return fmt.Errorf("audit: %w", err)
	}
	if tail.line == nil {
		l.seq = last.first - 1 // an empty file: its name says where the chain goes on
		return nil
	}
	r, err := decode(tail.line)
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("audit: the last record of %s: %w (run shortleaf audit verify)", last.name, err)
	}
	l.seq, l.head = r.Seq, r.Hash
	l.fileStart = r.Time
	if first, err := firstRecordTime(path); err == nil {
		l.fileStart = first
	}
	if r.Checkpoint == nil || !r.Checkpoint.Final {
		notes["previous_run"] = "ended without a closing checkpoint (crash or kill)"
	}
	return nil
}

type tailLine struct {
	line []byte
	torn int64
}

// lastLine reads the last complete line of f and the size up to its end;
// bytes after the last newline are torn.
func lastLine(f *os.File) (tailLine, int64, error) {
	st, err := f.Stat()
	if err != nil {
		return tailLine{}, 0, fmt.Errorf("audit: %w", err)
	}
	size := st.Size()
	const chunk = 64 << 10
	var buf []byte
	for off := size; ; {
		n := min(int64(chunk), off)
		off -= n
		b := make([]byte, n)
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return tailLine{}, 0, fmt.Errorf("audit: %w", err)
		}
		buf = append(b, buf...)
		complete := buf
		torn := int64(0)
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			torn = int64(len(buf) - i - 1)
			complete = buf[:i]
			if j := bytes.LastIndexByte(complete, '\n'); j >= 0 || off == 0 {
				return tailLine{line: complete[j+1:], torn: torn}, size - torn, nil
			}
		} else if off == 0 {
			return tailLine{torn: int64(len(buf))}, size - int64(len(buf)), nil
		}
		if off == 0 {
			return tailLine{line: complete, torn: torn}, size - torn, nil
		}
	}
}

func firstRecordTime(path string) (time.Time, error) {
	f, err := os.Open(path) //nolint:gosec // a file of the audit dir
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadBytes('\n')
	if err != nil {
		return time.Time{}, err
	}
	var r struct {
		Time time.Time `json:"time"`
	}
	err = json.Unmarshal(line, &r)
	return r.Time, err
}

// Append queues r and returns its ticket for Wait. It blocks only while the
// queue is full (the disk is failing or far behind).
func (l *Log) Append(r Record) uint64 {
	l.mu.Lock()
	for len(l.pending) >= l.cfg.QueueSize && !l.closing {
		space := l.space
		l.mu.Unlock()
		<-space
		l.mu.Lock()
	}
	if l.closing {
		l.mu.Unlock()
		return 0
	}
	l.pending = append(l.pending, r)
	l.queued++
	ticket := l.queued
	// The writer needs waking only to arm its flush timer (the first
	// record) or to write a full batch; a caller that waits wakes it too.
	wake := len(l.pending) == 1 || len(l.pending) >= l.cfg.maxBatch
	l.mu.Unlock()
	if wake {
		l.wakeWriter()
	}
	return ticket
}

func (l *Log) wakeWriter() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// signalSpaceLocked wakes the callers of Append waiting for room.
func (l *Log) signalSpaceLocked() {
	close(l.space)
	l.space = make(chan struct{})
}

// Wait returns once the record of ticket is written and fsynced.
func (l *Log) Wait(ctx context.Context, ticket uint64) error {
	for {
		l.mu.Lock()
		if l.durable >= ticket {
			l.mu.Unlock()
			return nil
		}
		ch := l.committed
		urge := ticket > l.waitFor
		l.waitFor = max(l.waitFor, ticket)
		l.mu.Unlock()
		if urge {
			l.wakeWriter()
		}
		select {
		case <-ch:
		case <-l.done:
			return errors.New("audit: the log is closed")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Healthy reports the last write error, nil when the log is writing.
func (l *Log) Healthy() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failure != nil {
		return fmt.Errorf("audit log: %w", l.failure)
	}
	return nil
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	l.statMu.Lock()
	defer l.statMu.Unlock()
	return l.stats
}

// Queued is the number of records waiting to be written.
func (l *Log) Queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pending)
}

// Close writes what is queued and a final checkpoint, then stops.
func (l *Log) Close() error { return l.stop(false) }

// stop ends the writer: after writing what is queued and a final
// checkpoint, or, crashed (tests), as a crash would, writing nothing more.
func (l *Log) stop(crashed bool) error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		<-l.done
		return nil
	}
	l.closing, l.crashed = true, crashed
	l.signalSpaceLocked()
	close(l.closed)
	l.mu.Unlock()
	l.wakeWriter()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failure
}

// run is the writer: it takes everything queued, writes it as one batch,
// fsyncs, and signs a checkpoint every CheckpointInterval.
func (l *Log) run(nextCheckpoint <-chan time.Time) {
	defer close(l.done)
	defer func() {
		if l.file != nil {
			_ = l.file.Close()
		}
	}()
	var flush <-chan time.Time
	for {
		checkpoint, flushed := false, false
		select {
		case <-l.wake:
		case <-flush:
			flushed = true
		case <-nextCheckpoint:
			checkpoint = true
			nextCheckpoint = l.cfg.Clock.After(l.cfg.CheckpointInterval)
		}
		l.mu.Lock()
		if !flushed && !checkpoint && !l.closing && l.waitFor <= l.durable && len(l.pending) < l.cfg.maxBatch {
			// Nobody waits: let records gather, at most flushDelay.
			if len(l.pending) > 0 && flush == nil {
				flush = time.After(flushDelay)
			}
			l.mu.Unlock()
			continue
		}
		flush = nil
		batch, closing, crashed := l.pending, l.closing, l.crashed
		l.pending = l.spare[:0]
		if len(batch) > l.cfg.maxBatch {
			// The rest waits for the next round, which comes at once:
			// a batch is at most maxBatch records, so a file outgrows
			// MaxFileSize by at most one batch.
			l.pending = append(l.pending, batch[l.cfg.maxBatch:]...)
			batch = batch[:l.cfg.maxBatch]
			closing = false
			l.wakeWriter()
		}
		if len(batch) > 0 {
			l.signalSpaceLocked()
		}
		l.mu.Unlock()
		if crashed {
			return
		}
		if closing {
			checkpoint = true
		}
		if checkpoint {
			batch = append(batch, l.checkpointRecord(closing))
		}
		l.commitRetrying(batch, closing)
		l.spare = batch[:0]
		if closing {
			// Records queued while closing were refused by Append; all
			// queued before are in this batch.
			return
		}
		l.applyRetention()
	}
}

// commitRetrying writes batch until it succeeds, or, once the log is
// closing, tries once more and gives up: a stop must not hang on a dead
// disk (the records' callers then get an error from Wait).
func (l *Log) commitRetrying(batch []Record, closing bool) {
	for attempt := 0; ; attempt++ {
		err := l.commit(batch)
		l.mu.Lock()
		l.failure = err
		if err == nil {
			l.durable += uint64(countQueued(batch))
			close(l.committed)
			l.committed = make(chan struct{})
		}
		l.mu.Unlock()
		if err == nil {
			return
		}
		l.countError()
		l.cfg.Logger.Error("audit log write failed; issuance waits until it succeeds", slog.Any("error", err), slog.Int("records", len(batch)))
		if closing && attempt > 0 {
			return
		}
		select {
		case <-l.cfg.Clock.After(writeRetry):
		case <-l.closed:
			closing = true // one more try, then give up
		}
	}
}

// countQueued is how many records of batch came from Append (the
// checkpoint the writer adds has no ticket).
func countQueued(batch []Record) int {
	n := len(batch)
	if n > 0 && batch[n-1].Action == ActionLogCheckpoint {
		n--
	}
	return n
}

// commit chains, writes and fsyncs batch. On failure the file is cut back
// to where it was, so a retry writes the same records again and nothing
// half-written stays.
func (l *Log) commit(batch []Record) error {
	if len(batch) == 0 {
		return nil
	}
	if err := l.rotateIfDue(batch[0].Time); err != nil {
		return err
	}
	if l.fileSize == 0 && l.cfg.FileHeader != nil {
		if h, ok := l.cfg.FileHeader(); ok {
			batch = append([]Record{h}, batch...)
		}
	}
	seq, head := l.seq, l.head
	l.buf.Reset()
	for i := range batch {
		r := &batch[i]
		seq++
		r.Seq, r.Replica, r.Prev = seq, l.cfg.Replica, head
		r.Time = r.Time.UTC()
		if r.Checkpoint != nil {
			l.signCheckpoint(r)
		}
		line, hash, err := encode(r)
		if err != nil {
			return err
		}
		r.Hash, head = hash, hash
		l.buf.Write(line)
	}
	_, err := l.file.Write(l.buf.Bytes())
	if err == nil {
		err = l.file.Sync()
	}
	if err != nil {
		_ = l.file.Truncate(l.fileSize)
		_, _ = l.file.Seek(l.fileSize, io.SeekStart)
		return fmt.Errorf("write %s: %w", l.fileName, err)
	}
	l.fileSize += int64(l.buf.Len())
	l.seq, l.head = seq, head
	l.statMu.Lock()
	l.stats.Records += uint64(len(batch))
	l.stats.Commits++
	l.stats.Head = seq
	if cp := batch[len(batch)-1].Checkpoint; cp != nil && cp.Signature != nil {
		l.stats.LastCheckpoint = batch[len(batch)-1].Time
	}
	l.statMu.Unlock()
	if cp := batch[len(batch)-1].Checkpoint; cp != nil {
		// The log line is a witness outside the data dir: a verifier given
		// it (audit verify --witness) detects a log cut back before it.
		l.cfg.Logger.Info("audit checkpoint", slog.Uint64("seq", cp.Seq), slog.String("head", cp.Head), slog.Bool("signed", cp.Signature != nil))
	}
	return nil
}

func (l *Log) countError() {
	l.statMu.Lock()
	l.stats.WriteErrors++
	l.statMu.Unlock()
}

// checkpointRecord is a checkpoint of everything written before it; commit
// fills in the head and signs it.
func (l *Log) checkpointRecord(final bool) Record {
	return Record{Time: l.cfg.Clock.Now(), Actor: ActorServer, Action: ActionLogCheckpoint, Result: ResultOK,
		Checkpoint: &Checkpoint{Interval: Duration(l.cfg.CheckpointInterval), Final: final}}
}

// signCheckpoint sets r's checkpoint to the head before r and signs it. A
// failed signature leaves the checkpoint unsigned, with the reason: the
// chain goes on, and verify names the unsigned checkpoint.
func (l *Log) signCheckpoint(r *Record) {
	cp := r.Checkpoint
	cp.Seq, cp.Head = r.Seq-1, r.Prev
	if l.cfg.Signer == nil {
		r.Reason = "no signer configured"
		return
	}
	sig, chain, err := l.cfg.Signer.SignDetached(CheckpointMessage(l.cfg.Replica, cp, r.Time))
	if err != nil {
		r.Result, r.Reason = ResultError, "not signed: "+err.Error()
		return
	}
	cp.Signature = sig
	cp.Chain = cp.Chain[:0]
	for _, c := range chain {
		cp.Chain = append(cp.Chain, c.Raw)
	}
}

// rotateIfDue starts a new file when there is none, or the current one is
// full or old.
func (l *Log) rotateIfDue(now time.Time) error {
	if l.file != nil && l.fileSize < l.cfg.MaxFileSize && now.Sub(l.fileStart) < l.cfg.MaxFileAge {
		return nil
	}
	if l.file != nil && l.fileSize == 0 {
		return nil // an empty file stays current however old it is
	}
	name := fileName(l.seq + 1)
	path := filepath.Join(l.cfg.Dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600) //nolint:gosec // a file of the audit dir
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	if err := safefile.SyncDir(l.cfg.Dir); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	if l.file != nil {
		_ = l.file.Close()
	}
	l.file, l.fileName, l.fileSize, l.fileStart = f, name, 0, now
	return nil
}

// applyRetention removes the oldest files beyond MaxTotalSize or MaxAge.
// Each removal is first recorded (durably) with the removed file's last
// sequence number and hash, so verify can tell it from a deleted file.
func (l *Log) applyRetention() {
	files, err := listFiles(l.cfg.Dir)
	if err != nil || len(files) < 2 {
		return
	}
	var total int64
	for _, f := range files {
		total += f.size
	}
	now := l.cfg.Clock.Now()
	for i, f := range files[:len(files)-1] {
		if total <= l.cfg.MaxTotalSize && now.Sub(f.modTime) <= l.cfg.MaxAge {
			return
		}
		lastSeq := files[i+1].first - 1
		tail, err := readLastRecord(filepath.Join(l.cfg.Dir, f.name))
		if err != nil {
			l.cfg.Logger.Error("audit retention: cannot read the file to remove; keeping it", slog.String("file", f.name), slog.Any("error", err))
			return
		}
		rec := Record{Time: now, Actor: ActorServer, Action: ActionLogRetention, Object: f.name, Result: ResultOK,
			Details: map[string]string{"first_seq": fmt.Sprint(f.first), "last_seq": fmt.Sprint(lastSeq), "last_hash": tail.Hash}}
		if err := l.commit([]Record{rec}); err != nil {
			l.countError()
			l.cfg.Logger.Error("audit retention: recording the removal failed; keeping the file", slog.String("file", f.name), slog.Any("error", err))
			return
		}
		if err := os.Remove(filepath.Join(l.cfg.Dir, f.name)); err != nil {
			l.cfg.Logger.Error("audit retention: remove failed", slog.String("file", f.name), slog.Any("error", err))
			return
		}
		_ = safefile.SyncDir(l.cfg.Dir)
		total -= f.size
		l.cfg.Logger.Info("audit retention removed a file", slog.String("file", f.name), slog.Uint64("last_seq", lastSeq))
	}
}

func readLastRecord(path string) (Record, error) {
	f, err := os.Open(path) //nolint:gosec // a file of the audit dir
	if err != nil {
		return Record{}, err
	}
	defer f.Close()
	tail, _, err := lastLine(f)
	if err != nil {
		return Record{}, err
	}
	if tail.line == nil {
		return Record{}, errors.New("no complete record")
	}
	return decode(tail.line)
}
