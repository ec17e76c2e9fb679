package k8s

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/shortleaf/shortleaf/attest"
)

// AttestorConfig configures the Kubernetes workload attestor.
type AttestorConfig struct {
	Kubelet KubeletConfig
	// ProcRoot is where the node's /proc is seen from the agent (the agent
	// runs with hostPID in a DaemonSet); default /proc.
	ProcRoot string
}

// Attestor finds a calling process's pod and container and gives its k8s
// selectors.
type Attestor struct {
	kubelet  *Kubelet
	procRoot string
}

// NewAttestor returns the attestor.
func NewAttestor(cfg AttestorConfig) (*Attestor, error) {
	kl, err := NewKubelet(cfg.Kubelet)
	if err != nil {
		return nil, err
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	return &Attestor{kubelet: kl, procRoot: cfg.ProcRoot}, nil
}

// Attest returns the k8s selectors of process pid, none when it is not in
// a Kubernetes pod. running reports whether the process that connected
// still runs: read after its cgroups, it keeps a PID reused by another
// process from being attested as the first one's container.
func (a *Attestor) Attest(ctx context.Context, pid int32, running func() bool) ([]attest.Selector, error) {
	raw, err := os.ReadFile(filepath.Join(a.procRoot, strconv.Itoa(int(pid)), "cgroup"))
	if err != nil {
		return nil, fmt.Errorf("k8s: cgroups of pid %d: %w", pid, err)
	}
	if !running() {
		return nil, errors.New("k8s: the caller exited before its cgroups were read")
	}
	c, inPod, err := ParseCgroups(raw)
	if err != nil || !inPod {
		return nil, err
	}
	return a.kubelet.ContainerSelectors(ctx, c)
}
