package audit

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// maxLine bounds one record's line when reading (records are well under a
// kilobyte; checkpoints carry a certificate chain).
const maxLine = 1 << 20

// Witness is a checkpoint seen outside the log (the server's "audit
// checkpoint" log line): the log must hold record Seq with hash Hash.
type Witness struct {
	Seq  uint64
	Hash string
}

// VerifyOptions say what to check a log against.
type VerifyOptions struct {
	Dir string
	// Roots are the trust bundle's X.509 roots; checkpoint signers must
	// chain to one. Nil: signatures are checked against the certificate in
	// the checkpoint only, and the report says so.
	Roots []*x509.Certificate
	// Witnesses are checkpoints the log must still hold.
	Witnesses []Witness
	// Now is the time the tail's last checkpoint is judged against.
	Now time.Time
}

// Problem is one thing verify found wrong, named by where it is.
type Problem struct {
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
	Seq  uint64 `json:"seq,omitempty"`
	What string `json:"what"`
}

func (p Problem) String() string {
	where := ""
	if p.File != "" {
		where = fmt.Sprintf("%s:%d: ", p.File, p.Line)
	}
	if p.Seq != 0 {
		where += fmt.Sprintf("record %d: ", p.Seq)
	}
	return where + p.What
}

// Report is what verify found.
type Report struct {
	Files             int       `json:"files"`
	Records           int       `json:"records"`
	FirstSeq          uint64    `json:"first_seq"`
	LastSeq           uint64    `json:"last_seq"`
	Head              string    `json:"head"`
	Checkpoints       int       `json:"checkpoints"`
	SignedCheckpoints int       `json:"signed_checkpoints"`
	LastCheckpoint    time.Time `json:"last_checkpoint,omitzero"`
	Problems          []Problem `json:"problems,omitempty"`
	Notes             []string  `json:"notes,omitempty"`
}

// OK says the log is whole.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// verifier walks the records in chain order.
type verifier struct {
	opts      VerifyOptions
	rep       Report
	prev      *Record
	prevWhere Problem
	start     *Record
	// retained maps the last sequence number of each file retention
	// removed to that record's hash.
	retained  map[uint64]string
	witnesses map[uint64]string
	lastCP    *Record
	// signed are the checkpoints whose signature verified by their own
	// certificate; whether that chains to a trusted root is decided at
	// the end, once every root the log names is known.
	signed []signedCheckpoint
	// roots are the root certificates the log's bundle records name.
	roots []namedRoot
}

type signedCheckpoint struct {
	rec   *Record
	where Problem
	chain []*x509.Certificate
}

type namedRoot struct {
	seq  uint64
	cert *x509.Certificate
}

// Verify checks every file of the log in opts.Dir: each record's hash, the
// chain from record to record and file to file, the sequence numbers, the
// checkpoints' signatures, retention records for the files no longer there,
// the witnesses, and that the log ends at a final checkpoint or one recent
// enough that the server is still writing it.
func Verify(opts VerifyOptions) (*Report, error) {
	files, err := listFiles(opts.Dir)
	if err != nil {
		return nil, err
	}
	v := &verifier{opts: opts, retained: map[uint64]string{}, witnesses: map[uint64]string{}}
	for _, w := range opts.Witnesses {
		v.witnesses[w.Seq] = w.Hash
	}
	v.rep.Files = len(files)
	for i, f := range files {
		if err := v.file(f, i == len(files)-1); err != nil {
			return nil, err
		}
	}
	v.finish()
	return &v.rep, nil
}

func (v *verifier) problem(p Problem, format string, args ...any) {
	p.What = fmt.Sprintf(format, args...)
	v.rep.Problems = append(v.rep.Problems, p)
}

func (v *verifier) file(f logFile, newest bool) error {
	fh, err := os.Open(filepath.Join(v.opts.Dir, f.name)) //nolint:gosec // a file of the audit dir
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer fh.Close()
	rd := bufio.NewReaderSize(fh, 64<<10)
	for n := 1; ; n++ {
		line, err := readLine(rd)
		where := Problem{File: f.name, Line: n}
		if errors.Is(err, io.EOF) {
			if len(line) > 0 {
				if newest {
					v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("%s:%d: a torn last record (%d bytes): the server is writing, or crashed in mid-write (cut off at its next start)", f.name, n, len(line)))
				} else {
					v.problem(where, "a torn record (%d bytes without an end) in a file that is not the newest", len(line))
				}
			}
			if n == 1 && len(line) == 0 && !newest {
				v.problem(where, "the file is empty")
			}
			return nil
		}
		if err != nil {
			v.problem(where, "%v", err)
			return nil
		}
		r, derr := decode(line)
		where.Seq = r.Seq
		if derr != nil && !errors.Is(derr, errAltered) {
			v.problem(where, "unreadable: %v", derr)
			continue
		}
		if derr != nil {
			v.problem(where, "%v", derr)
		}
		if n == 1 && r.Seq != f.first {
			v.problem(where, "the file is named for record %d but starts with record %d", f.first, r.Seq)
		}
		v.record(&r, where)
	}
}

// readLine reads one line without its newline; io.EOF with the bytes of a
// last line that has no newline.
func readLine(rd *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := rd.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("a line longer than %d bytes", maxLine)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, err
		}
	}
}

func (v *verifier) record(r *Record, where Problem) {
	v.rep.Records++
	if v.prev == nil {
		v.rep.FirstSeq = r.Seq
		v.start = r
	} else {
		p := v.prev
		switch {
		case r.Seq == p.Seq+1:
			if r.Prev != p.Hash {
				v.problem(where, "does not follow record %d (%s:%d): its prev hash is not that record's hash (a record was replaced or reordered)", p.Seq, v.prevWhere.File, v.prevWhere.Line)
			}
		case r.Seq > p.Seq+1:
			v.problem(where, "records %s are missing (after record %d at %s:%d)", seqRange(p.Seq+1, r.Seq-1), p.Seq, v.prevWhere.File, v.prevWhere.Line)
		default:
			v.problem(where, "out of order: it comes after record %d (%s:%d)", p.Seq, v.prevWhere.File, v.prevWhere.Line)
		}
	}
	if h, ok := v.witnesses[r.Seq]; ok {
		if h != r.Hash {
			v.problem(where, "its hash %s is not the witnessed %s", r.Hash, h)
		}
		delete(v.witnesses, r.Seq)
	}
	switch r.Action {
	case ActionBundle:
		for _, der := range strings.Fields(r.Details[DetailRoots]) {
			if raw, err := base64.StdEncoding.DecodeString(der); err == nil {
				if c, err := x509.ParseCertificate(raw); err == nil {
					v.roots = append(v.roots, namedRoot{seq: r.Seq, cert: c})
				}
			}
		}
	case ActionLogRetention:
		last, err := strconv.ParseUint(r.Details["last_seq"], 10, 64)
		if err == nil {
			v.retained[last] = r.Details["last_hash"]
		}
	case ActionLogOpened:
		if note := r.Details["previous_run"]; note != "" {
			v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("record %d: the server started again; its previous run %s, so records just before it cannot be proven complete", r.Seq, note))
		}
	}
	if r.Checkpoint != nil {
		v.checkpoint(r, where)
	}
	v.prev, v.prevWhere = r, where
	v.rep.LastSeq, v.rep.Head = r.Seq, r.Hash
}

func seqRange(a, b uint64) string {
	if a == b {
		return strconv.FormatUint(a, 10)
	}
	return fmt.Sprintf("%d..%d", a, b)
}

func (v *verifier) checkpoint(r *Record, where Problem) {
	cp := r.Checkpoint
	v.rep.Checkpoints++
	v.lastCP = r
	v.rep.LastCheckpoint = r.Time
	if cp.Seq+1 != r.Seq || cp.Head != r.Prev {
		v.problem(where, "the checkpoint names record %d with head %s, not the record before it", cp.Seq, cp.Head)
	}
	if len(cp.Signature) == 0 {
		v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("record %d: an unsigned checkpoint (%s)", r.Seq, r.Reason))
		return
	}
	chain, err := checkCheckpointSignature(r)
	if err != nil {
		v.problem(where, "checkpoint signature: %v", err)
		return
	}
	v.signed = append(v.signed, signedCheckpoint{rec: r, where: where, chain: chain})
}

// checkCheckpointSignature checks r's signature by its chain's first
// certificate and returns the chain.
func checkCheckpointSignature(r *Record) ([]*x509.Certificate, error) {
	cp := r.Checkpoint
	if len(cp.Chain) == 0 {
		return nil, errors.New("no signer certificate")
	}
	certs := make([]*x509.Certificate, 0, len(cp.Chain))
	for _, der := range cp.Chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("signer chain: %w", err)
		}
		certs = append(certs, c)
	}
	signer := certs[0]
	var algo x509.SignatureAlgorithm
	switch signer.PublicKey.(type) {
	case *ecdsa.PublicKey:
		algo = x509.ECDSAWithSHA256
	case *rsa.PublicKey:
		algo = x509.SHA256WithRSA
	case ed25519.PublicKey:
		algo = x509.PureEd25519
	default:
		return nil, fmt.Errorf("signer key type %T", signer.PublicKey)
	}
	if err := signer.CheckSignature(algo, CheckpointMessage(r.Replica, cp, r.Time), cp.Signature); err != nil {
		return nil, fmt.Errorf("does not verify: %w", err)
	}
	return certs, nil
}

// chainsTo says whether chain (signer first) leads to one of roots at t.
func chainsTo(chain []*x509.Certificate, roots []*x509.Certificate, t time.Time) error {
	opts := x509.VerifyOptions{Roots: x509.NewCertPool(), Intermediates: x509.NewCertPool(), CurrentTime: t,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	for _, root := range roots {
		opts.Roots.AddCert(root)
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := chain[0].Verify(opts)
	return err
}

// trustCheckpoints decides which checkpoints chain to a trusted root. The
// bundle's roots are trusted; so is every root the log names before a
// checkpoint signed under a trusted root, since that checkpoint vouches for
// everything before it. Roots retired long ago, whose keys signed the
// early checkpoints, are thus trusted through the later ones.
func (v *verifier) trustCheckpoints() {
	if v.opts.Roots == nil {
		v.rep.SignedCheckpoints = len(v.signed)
		if len(v.signed) > 0 {
			v.rep.Notes = append(v.rep.Notes, "checkpoint signers were not checked against a trust bundle (give --bundle)")
		}
		return
	}
	trusted := append([]*x509.Certificate(nil), v.opts.Roots...)
	named := 0 // the roots of v.roots already trusted, in order of seq
	ok := make([]bool, len(v.signed))
	for changed := true; changed; {
		changed = false
		vouched := uint64(0)
		for i, sc := range v.signed {
			if !ok[i] && chainsTo(sc.chain, trusted, sc.rec.Time) == nil {
				ok[i], changed = true, true
			}
			if ok[i] {
				vouched = max(vouched, sc.rec.Checkpoint.Seq)
			}
		}
		for named < len(v.roots) && v.roots[named].seq <= vouched {
			trusted = append(trusted, v.roots[named].cert)
			named++
			changed = true
		}
	}
	for i, sc := range v.signed {
		if ok[i] {
			v.rep.SignedCheckpoints++
			continue
		}
		err := chainsTo(sc.chain, trusted, sc.rec.Time)
		v.problem(sc.where, "checkpoint signature: the signer %q does not chain to the trust bundle or a root the log vouches for: %v", sc.chain[0].Subject.String(), err)
	}
}

func (v *verifier) finish() {
	v.trustCheckpoints()
	if s := v.start; s != nil && (s.Seq != 1 || s.Prev != genesis) {
		if h, ok := v.retained[s.Seq-1]; ok && h == s.Prev {
			v.rep.Notes = append(v.rep.Notes, fmt.Sprintf("records %s were removed by retention (recorded)", seqRange(1, s.Seq-1)))
		} else if s.Seq > 1 {
			v.problem(Problem{Seq: s.Seq}, "the log starts here: records %s are missing and no retention record accounts for them", seqRange(1, s.Seq-1))
		} else {
			v.problem(Problem{Seq: s.Seq}, "the first record's prev is not the genesis hash")
		}
	}
	for seq, h := range v.witnesses {
		if seq > v.rep.LastSeq {
			v.problem(Problem{Seq: seq}, "witnessed (hash %s) but the log ends at record %d: records were cut from its end", h, v.rep.LastSeq)
		} else {
			v.problem(Problem{Seq: seq}, "witnessed (hash %s) but not in the log", h)
		}
	}
	if v.prev == nil {
		return
	}
	last := v.prev
	if last.Checkpoint != nil && last.Checkpoint.Final {
		return
	}
	interval := DefaultCheckpointInterval
	since := v.start.Time
	if v.lastCP != nil {
		interval, since = time.Duration(v.lastCP.Checkpoint.Interval), v.lastCP.Time
	}
	if v.opts.Now.Sub(since) > 2*interval {
		v.problem(Problem{Seq: last.Seq}, "the log ends without a final checkpoint, and its last checkpoint (%s) is older than twice the checkpoint interval (%s): "+
			"records after it were cut, or the server stopped uncleanly and has not started since", since.Format(time.RFC3339), interval)
	}
}
