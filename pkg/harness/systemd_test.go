package harness_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shortleaf/shortleaf/pkg/harness"
)

// The systemd units in docs/deploy/systemd pass `systemd-analyze verify`
// (unknown keys, bad values, a missing binary all fail it) with ExecStart
// pointed at the binary under test.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	units, err := filepath.Glob("../../docs/deploy/systemd/*.service")
	if err != nil || len(units) != 2 {
		t.Fatalf("units: %v %v, want the server's and the agent's", units, err)
	}
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		text := string(raw)
		for _, want := range []string{"ProtectSystem=strict", "StateDirectory=", "RuntimeDirectory=", "NoNewPrivileges=yes", "ExecStart=/usr/local/bin/shortleaf "} {
			if !strings.Contains(text, want) {
				t.Errorf("%s lacks %s", filepath.Base(u), want)
			}
		}
		// The flags of ExecStart are ones the binary takes: with a config
		// that does not exist it fails on the config, not on a flag.
		for _, line := range strings.Split(text, "\n") {
			if args, ok := strings.CutPrefix(line, "ExecStart=/usr/local/bin/shortleaf "); ok {
				fields := strings.Fields(args)
				for i := range fields {
					if i > 0 && fields[i-1] == "--config" {
						fields[i] = filepath.Join(dir, "missing.yaml")
					}
				}
				out, _ := exec.Command(harness.Binary(t), fields...).CombinedOutput() //nolint:gosec // the binary under test
				if !strings.Contains(string(out), "missing.yaml") || strings.Contains(string(out), "unknown flag") {
					t.Errorf("%s: ExecStart %q: %s", filepath.Base(u), args, out)
				}
			}
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, "/usr/local/bin/shortleaf", harness.Binary(t))), 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(analyze, append([]string{"verify"}, paths...)...).CombinedOutput() //nolint:gosec // fixed tool, our files
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
