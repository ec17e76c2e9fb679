package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/clock"
)

var t0 = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// testCA is a root and an intermediate that signs checkpoints.
type testCA struct {
	root, inter *x509.Certificate
	key         *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	interKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	tmpl.SerialNumber, tmpl.Subject = big.NewInt(2), pkix.Name{CommonName: "intermediate"}
	tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
	interDER, err := x509.CreateCertificate(rand.Reader, tmpl, root, interKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(interDER)
	return &testCA{root: root, inter: inter, key: interKey}
}

func (c *testCA) SignDetached(msg []byte) ([]byte, []*x509.Certificate, error) {
	sum := sha256.Sum256(msg)
	sig, err := c.key.Sign(rand.Reader, sum[:], crypto.SHA256)
	return sig, []*x509.Certificate{c.inter}, err
}

type fixture struct {
	t     *testing.T
	dir   string
	clock *clock.Fake
	ca    *testCA
	cfg   Config
}

func newFixture(t *testing.T, tweak func(*Config)) *fixture {
	f := &fixture{t: t, dir: filepath.Join(t.TempDir(), "audit"), clock: clock.NewFake(t0), ca: newTestCA(t)}
	f.cfg = Config{Dir: f.dir, Replica: "local", Clock: f.clock, Signer: f.ca}
	if tweak != nil {
		tweak(&f.cfg)
	}
	return f
}

func (f *fixture) open() *Log {
	f.t.Helper()
	l, err := Open(f.cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return l
}

// write opens the log, appends n issuance records, waits for them and closes.
func (f *fixture) write(n int) {
	f.t.Helper()
	l := f.open()
	var ticket uint64
	for i := range n {
		ticket = l.Append(issuance(f.clock.Now(), i))
	}
	if err := l.Wait(context.Background(), ticket); err != nil {
		f.t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		f.t.Fatal(err)
	}
}

func issuance(at time.Time, i int) Record {
	return Record{Time: at, Actor: "spiffe://example.org/agent/join_token/a1", Action: ActionX509SVIDIssue, Object: fmt.Sprintf("entry-%d", i),
		Result: ResultOK, SPIFFEID: fmt.Sprintf("spiffe://example.org/w/%d", i), Serial: fmt.Sprintf("%x", 1000+i),
		SignerKeyID: "ab12", NotBefore: at.Add(-30 * time.Second), NotAfter: at.Add(5 * time.Minute)}
}

func (f *fixture) verify(w ...Witness) *Report {
	f.t.Helper()
	rep, err := Verify(VerifyOptions{Dir: f.dir, Roots: []*x509.Certificate{f.ca.root}, Now: f.clock.Now(), Witnesses: w})
	if err != nil {
		f.t.Fatal(err)
	}
	return rep
}

func (f *fixture) files() []string {
	f.t.Helper()
	files, err := listFiles(f.dir)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, lf := range files {
		out = append(out, filepath.Join(f.dir, lf.name))
	}
	return out
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	raw, err := os.ReadFile(path) //nolint:gosec // test file
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(raw, []byte("\n"))[:bytes.Count(raw, []byte("\n"))]
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantOK(t *testing.T, rep *Report) {
	t.Helper()
	if !rep.OK() {
		t.Fatalf("verify found problems in an untouched log: %v", rep.Problems)
	}
}

// wantProblem checks that verify found a problem containing each of want.
func wantProblem(t *testing.T, rep *Report, want ...string) {
	t.Helper()
	for _, p := range rep.Problems {
		s := p.String()
		hit := true
		for _, w := range want {
			hit = hit && strings.Contains(s, w)
		}
		if hit {
			return
		}
	}
	t.Fatalf("no problem names %q; got %v", want, rep.Problems)
}

func TestLogChainsRecordsAndVerifies(t *testing.T) {
	f := newFixture(t, nil)
	f.write(50)
	rep := f.verify()
	wantOK(t, rep)
	// audit.opened + 50 + the final checkpoint.
	if rep.Records != 52 || rep.FirstSeq != 1 || rep.LastSeq != 52 || rep.SignedCheckpoints != 1 {
		t.Fatalf("report %+v", rep)
	}
	for _, p := range f.files() {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v, want 0600", p, info.Mode().Perm())
		}
	}
	// Opened again, the chain goes on and the previous run is clean.
	f.write(3)
	rep = f.verify()
	wantOK(t, rep)
	if rep.LastSeq != 52+5 || len(rep.Notes) != 0 {
		t.Fatalf("report %+v", rep)
	}
	got, err := Query(f.dir, Filter{Serial: "0x03EA"}, 0)
	if err != nil || len(got) != 2 || got[0].SPIFFEID != "spiffe://example.org/w/2" {
		t.Fatalf("query by serial: %v %+v", err, got)
	}
}

func TestVerifyNamesEachTampering(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(t *testing.T, f *fixture)
		want   []string
	}{
		{"altered field", func(t *testing.T, f *fixture) {
			p := f.files()[0]
			lines := readLines(t, p)
			lines[10] = bytes.Replace(lines[10], []byte("spiffe://example.org/w/9"), []byte("spiffe://example.org/w/7"), 1)
			writeLines(t, p, lines)
		}, []string{"record 11", "altered"}},
		{"altered and rehashed", func(t *testing.T, f *fixture) {
			p := f.files()[0]
			lines := readLines(t, p)
			r, err := decode(bytes.TrimSuffix(lines[10], []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			r.SPIFFEID = "spiffe://example.org/attacker"
			lines[10], _, _ = encode(&r)
			writeLines(t, p, lines)
		}, []string{"record 12", "does not follow record 11"}},
		{"deleted record", func(t *testing.T, f *fixture) {
			p := f.files()[0]
			lines := readLines(t, p)
			writeLines(t, p, append(lines[:20:20], lines[21:]...))
		}, []string{"record 22", "records 21 are missing"}},
		{"reordered records", func(t *testing.T, f *fixture) {
			p := f.files()[0]
			lines := readLines(t, p)
			lines[5], lines[6] = lines[6], lines[5]
			writeLines(t, p, lines)
		}, []string{"record 6", "out of order"}},
		{"cut tail", func(t *testing.T, f *fixture) {
			p := f.files()[0]
			lines := readLines(t, p)
			writeLines(t, p, lines[:40])
			f.clock.Add(time.Hour)
		}, []string{"record 40", "without a final checkpoint"}},
		{"forged checkpoint", func(t *testing.T, f *fixture) {
			p := f.files()[0]
			lines := readLines(t, p)
			last := len(lines) - 1
			r, _ := decode(bytes.TrimSuffix(lines[last], []byte("\n")))
			other := newTestCA(t) // a key that does not chain to the bundle
			sig, chain, _ := other.SignDetached(CheckpointMessage(r.Replica, r.Checkpoint, r.Time))
			r.Checkpoint.Signature, r.Checkpoint.Chain = sig, [][]byte{chain[0].Raw}
			lines[last], _, _ = encode(&r)
			writeLines(t, p, lines)
		}, []string{"checkpoint signature", "does not chain to the trust bundle"}},
		{"deleted first file", func(t *testing.T, f *fixture) {
			if err := os.Remove(f.files()[0]); err != nil {
				t.Fatal(err)
			}
		}, []string{"records 1..", "no retention record"}},
		{"deleted middle file", func(t *testing.T, f *fixture) {
			if err := os.Remove(f.files()[1]); err != nil {
				t.Fatal(err)
			}
		}, []string{"are missing"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(c *Config) {
				if strings.Contains(tc.name, "file") {
					c.MaxFileSize, c.maxBatch = 4<<10, 8
				}
			})
			f.write(60)
			wantOK(t, f.verify())
			tc.tamper(t, f)
			wantProblem(t, f.verify(), tc.want...)
		})
	}
}

func TestRotationKeepsTheChainAndRetentionIsRecorded(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.MaxFileSize, c.maxBatch = 8<<10, 8
		c.MaxTotalSize = 40 << 10
	})
	for range 10 {
		f.write(40)
	}
	files := f.files()
	if len(files) < 4 {
		t.Fatalf("%d files, want several", len(files))
	}
	rep := f.verify()
	wantOK(t, rep)
	if rep.FirstSeq == 1 || !strings.Contains(strings.Join(rep.Notes, "\n"), "removed by retention") {
		t.Fatalf("retention did not remove the oldest files: %+v", rep)
	}
	var total int64
	for _, p := range files {
		st, _ := os.Stat(p)
		total += st.Size()
	}
	if total > 40<<10+8<<10 {
		t.Fatalf("files hold %d bytes, more than the bound", total)
	}
	// Age: everything but the current file goes once old enough.
	f.cfg.MaxAge = time.Hour
	f.clock.Add(2 * time.Hour)
	for _, p := range f.files() {
		_ = os.Chtimes(p, t0, t0)
	}
	f.write(1)
	f.write(1)
	rep = f.verify()
	wantOK(t, rep)
	if len(f.files()) > 2 {
		t.Fatalf("%d files after they aged out", len(f.files()))
	}
}

func TestTornRecordIsCutAtOpen(t *testing.T) {
	f := newFixture(t, nil)
	f.write(5)
	p := f.files()[0]
	fh, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0o600) //nolint:gosec // test file
	if err != nil {
		t.Fatal(err)
	}
	_, _ = fh.WriteString(`{"seq":8,"time":"2026-`)
	_ = fh.Close()
	rep := f.verify()
	wantOK(t, rep) // torn in the newest file: a note, not a problem
	f.write(1)
	rep = f.verify()
	wantOK(t, rep)
	got, _ := Query(f.dir, Filter{Action: ActionLogOpened}, 0)
	if len(got) != 2 || got[1].Details["torn_bytes_cut"] != "22" {
		t.Fatalf("opened records %+v", got)
	}
}

func TestCheckpointsAndWitnesses(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.CheckpointInterval = time.Minute })
	l := f.open()
	for i := range 10 {
		l.Append(issuance(f.clock.Now(), i))
	}
	f.clock.Add(time.Minute)
	waitFor(t, func() bool { return !l.Stats().LastCheckpoint.IsZero() })
	// An unclean stop: the log is left without its final checkpoint.
	l.abandon()
	f.clock.Add(90 * time.Second)
	cps, _ := Query(f.dir, Filter{Action: ActionLogCheckpoint}, 0)
	if len(cps) != 1 || cps[0].Checkpoint.Seq != 11 {
		t.Fatalf("checkpoints %+v", cps)
	}
	witness := Witness{Seq: cps[0].Checkpoint.Seq, Hash: cps[0].Checkpoint.Head}
	wantOK(t, f.verify(witness)) // within twice the interval: still running
	f.clock.Add(time.Hour)
	wantProblem(t, f.verify(witness), "without a final checkpoint")

	// Restarted: the opened record notes the unclean stop, the log ends
	// final again, and a witness of the cut-away tail is missed.
	f.write(2)
	rep := f.verify(witness, Witness{Seq: 500, Hash: "00"})
	wantProblem(t, rep, "record 500", "cut from its end")
	if !strings.Contains(strings.Join(rep.Notes, "\n"), "without a closing checkpoint") {
		t.Fatalf("notes %v", rep.Notes)
	}
	wantProblem(t, f.verify(Witness{Seq: witness.Seq, Hash: strings.Repeat("0", 64)}), "is not the witnessed")
}

func TestWaitReturnsWhenDurableAndAppendAfterCloseIsRefused(t *testing.T) {
	f := newFixture(t, nil)
	l := f.open()
	ticket := l.Append(issuance(t0, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Wait(ctx, ticket); err != nil {
		t.Fatal(err)
	}
	got, _ := Query(f.dir, Filter{SPIFFEID: "spiffe://example.org/w/1"}, 0)
	if len(got) != 1 {
		t.Fatalf("a waited-for record is not on disk: %+v", got)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l.Append(issuance(t0, 2)) != 0 {
		t.Fatal("a closed log took a record")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkAppendAndWait is a record's cost as issuance pays it: many
// callers append and wait for durability, and the writer commits them in
// batches (one write and fsync each).
func BenchmarkAppendAndWait(b *testing.B) {
	l, err := Open(Config{Dir: filepath.Join(b.TempDir(), "audit"), Replica: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	rec := issuance(time.Now(), 1)
	ctx := context.Background()
	b.SetParallelism(32)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Wait(ctx, l.Append(rec)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	s := l.Stats()
	b.ReportMetric(float64(s.Records)/float64(max(s.Commits, 1)), "records/commit")
}

// switchingSigner signs with whichever test CA is current.
type switchingSigner struct{ cur *testCA }

func (s *switchingSigner) SignDetached(msg []byte) ([]byte, []*x509.Certificate, error) {
	return s.cur.SignDetached(msg)
}

func rootRecord(c *testCA) Record {
	return Record{Time: t0, Actor: ActorServer, Action: ActionBundle, Object: c.root.Subject.CommonName, Result: ResultOK,
		Details: map[string]string{DetailRoots: base64.StdEncoding.EncodeToString(c.root.Raw)}}
}

// After a root rotation the bundle holds only the new root, yet the early
// checkpoints, signed under the old one, still verify: a checkpoint signed
// under the new root vouches for the record that named the old root. A
// root the log never named, or a bundle of another CA, does not verify.
func TestCheckpointsSignedUnderARetiredRoot(t *testing.T) {
	oldCA, newCA := newTestCA(t), newTestCA(t)
	sw := &switchingSigner{cur: oldCA}
	f := newFixture(t, func(c *Config) { c.Signer = sw })
	l := f.open()
	l.Append(rootRecord(oldCA))
	f.clock.Add(time.Minute) // a checkpoint under the old root
	waitFor(t, func() bool { return !l.Stats().LastCheckpoint.IsZero() })
	l.Append(rootRecord(newCA))
	first := l.Stats().LastCheckpoint
	f.clock.Add(time.Minute) // the old root's last checkpoint names the new root
	waitFor(t, func() bool { return l.Stats().LastCheckpoint.After(first) })
	sw.cur = newCA
	if err := l.Close(); err != nil { // the final checkpoint, under the new root
		t.Fatal(err)
	}
	for name, roots := range map[string][]*x509.Certificate{"new root": {newCA.root}, "old root": {oldCA.root}} {
		rep, err := Verify(VerifyOptions{Dir: f.dir, Roots: roots, Now: f.clock.Now()})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() || rep.SignedCheckpoints != 3 {
			t.Fatalf("with the %s: %d signed, problems %v", name, rep.SignedCheckpoints, rep.Problems)
		}
	}
	rep, err := Verify(VerifyOptions{Dir: f.dir, Roots: []*x509.Certificate{f.ca.root}, Now: f.clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	wantProblem(t, rep, "does not chain to the trust bundle")
}

// A disk that fails (here a file that is /dev/full: every write fails with
// ENOSPC) holds issuance back instead of losing records: Wait does not
// return, Healthy names the error, the errors are counted, and the writer
// keeps trying.
func TestFailingDiskHoldsRecordsBack(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	f := newFixture(t, nil)
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/full", filepath.Join(f.dir, fileName(1))); err != nil {
		t.Fatal(err)
	}
	l := f.open()
	ticket := l.Append(issuance(t0, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := l.Wait(ctx, ticket); err == nil {
		t.Fatal("a record was reported durable on a disk that takes no write")
	}
	waitFor(t, func() bool { return l.Healthy() != nil && l.Stats().WriteErrors > 0 })
	if err := l.Healthy(); !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("Healthy: %v", err)
	}
	f.clock.Add(writeRetry) // the writer tries again, and fails again
	waitFor(t, func() bool { return l.Stats().WriteErrors > 1 })
	if err := l.Close(); err == nil {
		t.Fatal("Close reported success with records unwritten")
	}
}
