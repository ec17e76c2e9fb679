package harness_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shortleaf/shortleaf/pkg/harness"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// The agent's health, as a container probe asks it (`shortleaf agent
// healthcheck` against a real agent process): ready once it serves its
// entry's SVID; not ready, naming why, once the server has not answered a
// sync within sync_deadline; alive all along.
func TestAgentHealthcheckTellsTheTruth(t *testing.T) {
	srv := harness.StartServer(t)
	dir := harness.ShortDir(t)
	token, agentID := srv.NewJoinToken(t)
	srv.CreateEntry(t, &adminv1.Entry{SpiffeId: "spiffe://example.org/web", ParentId: agentID, Selectors: []string{uidSelector()}})
	bundle, _ := srv.CA().Bundle()
	ag := harness.StartAgentProcess(t, harness.AgentProcessConfig{ServerAddr: srv.AgentAddr(), Bundle: bundle.X509Authorities(), JoinToken: token,
		DataDir: filepath.Join(dir, "agent"), SocketPath: filepath.Join(dir, "agent.sock"), Extra: "metrics_address: 127.0.0.1:0\nsync_deadline: 3s\n"})
	m := regexp.MustCompile(`"address":"(127\.0\.0\.1:\d+)"`).FindStringSubmatch(ag.Logs())
	if m == nil {
		t.Fatalf("the agent did not log its health listener:\n%s", ag.Logs())
	}
	check := func(args ...string) (string, error) {
		out, err := exec.Command(harness.Binary(t), append([]string{"agent", "healthcheck", "--address", m[1]}, args...)...).CombinedOutput() //nolint:gosec // the harness's binary
		return string(out), err
	}
	var out string
	var err error
	harness.Eventually(t, 20*time.Second, func() bool {
		out, err = check()
		return err == nil
	})
	if !strings.Contains(out, "agent is ready") {
		t.Fatalf("healthcheck: %q", out)
	}

	srv.Stop()
	harness.Eventually(t, 20*time.Second, func() bool {
		out, err = check()
		return err != nil
	})
	if !strings.Contains(out, "agent is not ready: no sync with the server for") || !strings.Contains(out, "sync deadline 3s") {
		t.Fatalf("an agent cut off from its server: %q", out)
	}
	if out, err := check("--live"); err != nil || !strings.Contains(out, "agent is running") {
		t.Fatalf("healthcheck --live: %v %q", err, out)
	}
}
