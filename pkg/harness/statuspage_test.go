package harness_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/shortleaf/shortleaf/pkg/harness"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// chromium finds Debian's Chromium (scripts/install-deps.sh installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; make test installs it (scripts/install-deps.sh)")
	}
	t.Skip("chromium is not installed; run scripts/install-deps.sh")
	return ""
}

// The status page of a live server, as an admin's browser shows it
// (headless Chromium, driven by chromedp), through a forced intermediate
// rotation: the CA timeline and table follow each state, the agent and its
// issuance are shown, and nothing secret is on it. A screenshot of the
// last state is saved in the test's temp dir.
func TestStatusPageInABrowserThroughARotation(t *testing.T) {
	exe := chromium(t)
	srv := harness.StartServer(t, func(c *server.Config) { c.StatusAddr = "127.0.0.1:0" })
	token, _ := srv.NewJoinToken(t)
	ag := harness.StartAgent(t, srv)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: ag.ID(), Selectors: []string{uidSelector()}})
	if _, err := fetchX509(t, ag.Addr(), 20*time.Second); err != nil {
		t.Fatal(err)
	}
	url := srv.StatusURL()
	if url == "" {
		t.Fatal("no status page address")
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.WindowSize(1280, 1600),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()

	type snapshot struct {
		text                     string
		html                     string
		active, prepared, old    int
		timelineBars, issuedBars int
	}
	load := func() snapshot {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible("#authorities")); err != nil {
			t.Fatalf("load %s: %v", url, err)
		}
		eval := func(js string, out *int) {
			t.Helper()
			v, err := chromedp.Run(ctx, chromedp.Evaluate[int](js))
			if err != nil {
				t.Fatalf("%s: %v", js, err)
			}
			*out = v
		}
		var s snapshot
		var err error
		if s.text, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`)); err != nil {
			t.Fatal(err)
		}
		if s.html, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.outerHTML`)); err != nil {
			t.Fatal(err)
		}
		eval(`document.querySelectorAll('#authorities tbody tr.state-active').length`, &s.active)
		eval(`document.querySelectorAll('#authorities tbody tr.state-prepared').length`, &s.prepared)
		eval(`document.querySelectorAll('#authorities tbody tr.state-old').length`, &s.old)
		eval(`document.querySelectorAll('svg.timeline g.authority rect.bar').length`, &s.timelineBars)
		eval(`document.querySelectorAll('svg.issuance rect.ok').length`, &s.issuedBars)
		return s
	}

	// Before: root, intermediate and JWT key, all active.
	s := load()
	if s.active != 3 || s.prepared != 0 || s.timelineBars != 3 {
		t.Fatalf("first load: %d active, %d prepared, %d bars in the timelines\n%s", s.active, s.prepared, s.timelineBars, s.text)
	}
	for _, want := range []string{"example.org", ag.ID(), "signing", "No federated trust domains"} {
		if !strings.Contains(s.text, want) {
			t.Errorf("the page does not show %q", want)
		}
	}
	if s.issuedBars == 0 || !strings.Contains(s.text, "signed") {
		t.Errorf("the issuance of the last hour is not drawn (%d bars)", s.issuedBars)
	}

	ctxAdmin := context.Background()
	next, err := srv.Admin.PrepareAuthority(ctxAdmin, &adminv1.PrepareAuthorityRequest{Kind: "x509"})
	if err != nil {
		t.Fatal(err)
	}
	s = load()
	if s.prepared != 1 || !strings.Contains(s.text, next.GetId()) || s.timelineBars != 4 {
		t.Fatalf("after prepare: %d prepared, %d bars; the page:\n%s", s.prepared, s.timelineBars, s.text)
	}
	if _, err := srv.Admin.ActivateAuthority(ctxAdmin, &adminv1.ActivateAuthorityRequest{Kind: "x509"}); err != nil {
		t.Fatal(err)
	}
	s = load()
	if s.active != 3 || s.prepared != 0 || s.old != 1 {
		t.Fatalf("after activate: %d active, %d prepared, %d old\n%s", s.active, s.prepared, s.old, s.text)
	}
	activeID, err := chromedp.Run(ctx, chromedp.Evaluate[string](
		`[...document.querySelectorAll('#authorities tbody tr.state-active')].map(r => r.cells[0].textContent + '=' + r.cells[2].textContent).join(' ')`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(activeID, "intermediate="+next.GetId()) {
		t.Errorf("the active intermediate shown is not the one activated: %s", activeID)
	}

	for name, secret := range map[string]string{"join token": token, "private key": "PRIVATE KEY", "passphrase": harness.Passphrase} {
		if strings.Contains(s.html, secret) {
			t.Errorf("the status page shows a %s", name)
		}
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(t.TempDir(), "status-page.png")
	if err := os.WriteFile(shot, png, 0o600); err != nil {
		t.Fatal(err)
	}
	if len(png) < 10_000 {
		t.Errorf("the screenshot is only %d bytes", len(png))
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
}
