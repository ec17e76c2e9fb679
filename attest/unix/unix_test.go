package unix_test

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	sysunix "golang.org/x/sys/unix"

	"github.com/shortleaf/shortleaf/attest"
	"github.com/shortleaf/shortleaf/attest/unix"
)

// running takes a pidfd of pid, as the agent does at connect, and reports
// through it whether that process still runs.
func running(t *testing.T, pid int) func() bool {
	t.Helper()
	fd, err := sysunix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sysunix.Close(fd) })
	return func() bool { return sysunix.PidfdSendSignal(fd, 0, nil, 0) == nil }
}

// self is this test process as the kernel reported it at connect.
func self(t *testing.T) unix.Caller {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	return unix.Caller{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Exe: exe, Running: running(t, os.Getpid())} //nolint:gosec // ids fit
}

func keys(t *testing.T, sels []attest.Selector) map[string]string {
	t.Helper()
	byKey := map[string]string{}
	for _, s := range sels {
		if err := s.Validate(); err != nil {
			t.Errorf("selector %s does not validate: %v", s, err)
		}
		k, v, _ := cut(s.Value)
		byKey[k] = v
	}
	return byKey
}

// The attestor, run on this very test process, finds its uid, gid, path and
// the hash of its binary, and each selector it makes validates.
func TestAttestSelf(t *testing.T) {
	a := unix.New()
	sels, err := a.Attest(context.Background(), self(t), unix.Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	byKey := keys(t, sels)
	if byKey["uid"] != strconv.Itoa(os.Getuid()) || byKey["gid"] != strconv.Itoa(os.Getgid()) {
		t.Errorf("uid/gid selectors = %v", byKey)
	}
	exe, _ := os.Executable()
	if byKey["path"] != exe {
		t.Errorf("path = %q, want %q", byKey["path"], exe)
	}
	if len(byKey["sha256"]) != 64 {
		t.Errorf("sha256 selector missing: %v", byKey)
	}
	// A second call hits the hash cache and agrees.
	again, _ := a.Attest(context.Background(), self(t), unix.Options{Hash: true})
	if !attest.Subset(sels, again) || !attest.Subset(again, sels) {
		t.Error("second attestation differs")
	}
}

// Executables are hashed only when asked (an entry uses unix:sha256), never
// above the size bound, and not after the caller went away.
func TestHashingIsBounded(t *testing.T) {
	if byKey := keys(t, mustAttest(t, unix.New(), context.Background(), unix.Options{})); byKey["sha256"] != "" || byKey["path"] != "" {
		t.Errorf("read the executable without being asked: %v", byKey)
	}
	if byKey := keys(t, mustAttest(t, unix.New(), context.Background(), unix.Options{Path: true})); byKey["sha256"] != "" || byKey["path"] == "" {
		t.Errorf("asked for the path only: %v", byKey)
	}
	small := unix.New()
	small.MaxHashSize = 1 << 10
	byKey := keys(t, mustAttest(t, small, context.Background(), unix.Options{Hash: true}))
	if _, ok := byKey["sha256"]; ok || byKey["path"] == "" {
		t.Errorf("executable above the size bound: %v, want path and no sha256", byKey)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := unix.New().Attest(ctx, self(t), unix.Options{Hash: true}); err == nil {
		t.Error("hashing went on for a caller that went away")
	}
}

func mustAttest(t *testing.T, a *unix.Attestor, ctx context.Context, opts unix.Options) []attest.Selector { //nolint:revive // t first
	t.Helper()
	sels, err := a.Attest(ctx, self(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	return sels
}

// A process that ran exec after it connected, or a PID that now names another
// process, gets only its uid and gid: path and hash describe a process that
// is no longer the caller.
func TestExecOrPIDReuseAfterConnectDropsPathAndHash(t *testing.T) {
	me := self(t)
	execd := me
	execd.Exe = "/usr/bin/trusted-daemon"
	reused := me
	reused.Running = func() bool { return false } // the process that connected is gone; the PID names another
	unknown := me
	unknown.Running, unknown.Exe = nil, ""
	for name, c := range map[string]unix.Caller{"exec after connect": execd, "PID reused": reused, "nothing known at connect": unknown} {
		sels, err := unix.New().Attest(context.Background(), c, unix.Options{Hash: true})
		if err != nil {
			t.Fatal(err)
		}
		byKey := keys(t, sels)
		if byKey["path"] != "" || byKey["sha256"] != "" || byKey["uid"] == "" {
			t.Errorf("%s: %v, want uid and gid only", name, byKey)
		}
	}
}

// A real exec: a shell connects (its start time and exe are read as the
// agent would at connect), then execs sleep; attesting it afterwards yields
// no path.
func TestRealExecAfterConnect(t *testing.T) {
	cmd := exec.Command("/bin/sh", "-c", "read x; exec sleep 30")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := int32(cmd.Process.Pid) //nolint:gosec // pids fit
	exeAtConnect, err := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	c := unix.Caller{PID: pid, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Exe: exeAtConnect, Running: running(t, cmd.Process.Pid)} //nolint:gosec // ids fit
	if byKey := keys(t, mustAttestCaller(t, c)); byKey["path"] != exeAtConnect {
		t.Fatalf("before exec: path %q, want %q", byKey["path"], exeAtConnect)
	}
	if _, err := stdin.Write([]byte("go\n")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if now, _ := os.Readlink("/proc/" + strconv.Itoa(int(pid)) + "/exe"); now != exeAtConnect {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shell did not exec within 10s")
		}
	}
	if byKey := keys(t, mustAttestCaller(t, c)); byKey["path"] != "" {
		t.Fatalf("after exec: path %q, want none", byKey["path"])
	}
}

func mustAttestCaller(t *testing.T, c unix.Caller) []attest.Selector {
	t.Helper()
	sels, err := unix.New().Attest(context.Background(), c, unix.Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	return sels
}

func TestAttestGoneProcessKeepsCredentials(t *testing.T) {
	sels, err := unix.New().Attest(context.Background(), unix.Caller{PID: 1 << 30, UID: 4242, GID: 4243}, unix.Options{Hash: true})
	if err != nil {
		t.Fatal(err)
	}
	if !attest.Subset([]attest.Selector{{Type: "unix", Value: "uid:4242"}, {Type: "unix", Value: "gid:4243"}}, sels) {
		t.Fatalf("selectors = %v", sels)
	}
	for _, s := range sels {
		if k, _, _ := cut(s.Value); k == "path" || k == "sha256" {
			t.Errorf("a vanished process got %s", s)
		}
	}
}

func cut(v string) (string, string, bool) {
	for i := range v {
		if v[i] == ':' {
			return v[:i], v[i+1:], true
		}
	}
	return v, "", false
}

// A caller that exited after connecting (its PID free for reuse) gets no
// path: the pidfd taken at connect says the process is gone.
func TestExitedCallerGetsNoPath(t *testing.T) {
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	alive := running(t, pid)
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	c := unix.Caller{PID: int32(pid), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Exe: exe, Running: alive} //nolint:gosec // ids fit
	if alive() {
		t.Fatal("the pidfd says a reaped process still runs")
	}
	if byKey := keys(t, mustAttestCaller(t, c)); byKey["path"] != "" {
		t.Fatalf("an exited caller got path %q", byKey["path"])
	}
}
