package devmode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shortleaf/shortleaf/pkg/adminclient"
	"github.com/shortleaf/shortleaf/pkg/agent"
	"github.com/shortleaf/shortleaf/pkg/config"
	"github.com/shortleaf/shortleaf/pkg/server"
	adminv1 "github.com/shortleaf/shortleaf/proto/admin/v1"
)

// TrustDomain is dev mode's trust domain.
const TrustDomain = "example.org"

// Config configures dev mode.
type Config struct {
	DataDir         string        // default /tmp/shortleaf/dev
	SocketPath      string        // default <DataDir>/agent.sock
	X509SVIDTTL     time.Duration // default 5m
	IntermediateTTL time.Duration // default 24h
	SyncInterval    time.Duration // default 1s: dev wants entry changes to show at once
	// StatusAddr is where the status page is served: default
	// DefaultStatusAddr (loopback, a free port); "off" turns it off.
	StatusAddr string
	Logger     *slog.Logger
	// Out receives the human instructions (the export line).
	Out io.Writer
}

// DefaultStatusAddr is dev mode's status page address: loopback only.
const DefaultStatusAddr = "127.0.0.1:0"

// DefaultDataDir is where dev mode keeps its state unless told otherwise.
const DefaultDataDir = "/tmp/shortleaf/dev"

// Run starts the server and the agent and serves until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.X509SVIDTTL == 0 {
		cfg.X509SVIDTTL = server.DefaultX509SVIDTTL
	}
	if cfg.SyncInterval == 0 {
		cfg.SyncInterval = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(dataDir, "agent.sock")
	}
	td := spiffeid.RequireTrustDomainFromString(TrustDomain)
	scfg := server.Config{
		TrustDomain: td, DataDir: filepath.Join(dataDir, "server"), AgentAPIAddr: "127.0.0.1:0",
		AdminSocket: filepath.Join(dataDir, "admin.sock"), DefaultSVIDTTL: cfg.X509SVIDTTL,
		AgentSVIDTTL: time.Hour, KeyType: "ec-p256", AgentLiveness: time.Minute, RootTTL: 365 * 24 * time.Hour, IntermediateTTL: cfg.IntermediateTTL,
		InsecureUnencryptedKeys: true, Logger: cfg.Logger.With(slog.String("component", "server")),
	}
	if scfg.IntermediateTTL == 0 {
		scfg.IntermediateTTL = 24 * time.Hour
	}
	switch cfg.StatusAddr {
	case "":
		scfg.StatusAddr = DefaultStatusAddr
	case "off":
	default:
		scfg.StatusAddr = cfg.StatusAddr
	}
	// Agent SVIDs are signed by the intermediates too: keep them short enough
	// that a short --intermediate-ttl still rotates on schedule.
	if scfg.AgentSVIDTTL > scfg.IntermediateTTL/4 {
		scfg.AgentSVIDTTL = max(scfg.IntermediateTTL/4, scfg.DefaultSVIDTTL)
	}
	scfg.RotationInterval = time.Second
	if err := config.ValidateServer(&scfg); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	srv, err := server.New(ctx, scfg)
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	defer srv.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Run(gctx) })

	bundle, _ := srv.CA().Bundle()
	acfg := agent.Config{
		ServerAddrs: []string{srv.AgentAddr()}, TrustDomain: td, TrustBundle: bundle.X509Authorities(),
		DataDir: filepath.Join(dataDir, "agent"), SocketPath: cfg.SocketPath, SyncInterval: cfg.SyncInterval,
		Logger: cfg.Logger.With(slog.String("component", "agent")),
	}
	ag, err := startAgent(gctx, acfg, srv.AdminSocket())
	if err != nil {
		cancel()
		return errors.Join(err, g.Wait())
	}
	defer ag.Close()
	g.Go(func() error { return ag.Run(gctx) })

	fmt.Fprintf(cfg.Out, "shortleaf dev is running (trust domain %s)\n", TrustDomain)
	fmt.Fprintf(cfg.Out, "  workload identity: %s\n", devID(td))
	fmt.Fprintf(cfg.Out, "  admin socket:      %s\n", srv.AdminSocket())
	if u := srv.StatusURL(); u != "" {
		fmt.Fprintf(cfg.Out, "  status page:       %s\n", u)
	}
	fmt.Fprintf(cfg.Out, "export SHORTLEAF_ADMIN_SOCKET=%s\n", srv.AdminSocket())
	fmt.Fprintf(cfg.Out, "export SPIFFE_ENDPOINT_SOCKET=unix://%s\n", cfg.SocketPath)
	return g.Wait()
}

// startAgent resumes the agent's stored identity, or attests it with a fresh
// join token, and makes sure the dev entry is registered for it.
func startAgent(ctx context.Context, acfg agent.Config, adminSocket string) (*agent.Agent, error) {
	client, err := adminclient.Dial(adminSocket)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	defer client.Close()
	agentID := ""
	ag, err := agent.New(ctx, acfg)
	if errors.Is(err, agent.ErrNoIdentity) {
		tok, terr := client.CreateJoinToken(ctx, &adminv1.CreateJoinTokenRequest{})
		if terr != nil {
			return nil, fmt.Errorf("dev: create join token: %w", terr)
		}
		acfg.JoinToken, agentID = tok.GetToken(), tok.GetAgentId()
		ag, err = agent.New(ctx, acfg)
	}
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	if agentID == "" {
		agentID = ag.ID()
	}
	_, err = client.CreateEntry(ctx, &adminv1.CreateEntryRequest{Entry: &adminv1.Entry{
		SpiffeId:  devID(acfg.TrustDomain).String(),
		ParentId:  agentID,
		Selectors: []string{"unix:uid:" + strconv.Itoa(os.Getuid())},
	}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		_ = ag.Close()
		return nil, fmt.Errorf("dev: register %s: %w", devID(acfg.TrustDomain), err)
	}
	return ag, nil
}

// devID is spiffe://example.org/dev/<user>.
func devID(td spiffeid.TrustDomain) spiffeid.ID {
	name := strconv.Itoa(os.Getuid())
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	id, err := spiffeid.FromSegments(td, "dev", name)
	if err != nil {
		return spiffeid.RequireFromSegments(td, "dev", strconv.Itoa(os.Getuid()))
	}
	return id
}
