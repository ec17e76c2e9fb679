package statuspage

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/shortleaf/shortleaf/ca"
	"github.com/shortleaf/shortleaf/pkg/clock"
	"github.com/shortleaf/shortleaf/pkg/datastore"
)

// CA is what the page shows of the authority.
type CA interface {
	Authorities() []ca.Authority
	NextTransition(a ca.Authority) (string, time.Time)
	RootRotation() ca.RootRotationStatus
	Bundle() (*x509bundle.Bundle, uint64)
	CheckSigner() error
}

// Store is what the page reads of the datastore.
type Store interface {
	ListAgents(ctx context.Context) ([]*datastore.Agent, error)
	ListFederations(ctx context.Context) ([]*datastore.Federation, error)
}

// Config configures the page. Everything it shows is public or
// operational: no key, token or credential is among its inputs.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	ReplicaID   string
	CA          CA
	Store       Store
	Issuance    *History
	// IssuedTotals reads the cumulative X.509-SVID requests by result;
	// each page load samples it into Issuance, so the page is current.
	IssuedTotals func() map[string]float64
	// ClockSkews gives the agents' measured clock skews; nil: not shown.
	ClockSkews func() map[string]time.Duration
	// AuditHead gives the audit log's head sequence number and last
	// checkpoint; nil: the log is off.
	AuditHead func() (uint64, time.Time)
	// AgentLiveness is how recently an agent must have synced to be live.
	AgentLiveness time.Duration
	// Refresh is how often the page reloads itself; default 15s.
	Refresh time.Duration
	Clock   clock.Clock
	Logger  *slog.Logger
}

// maxAgentRows bounds the agents listed; the counts cover them all.
const maxAgentRows = 100

//go:embed assets
var assets embed.FS

var pageTemplate = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"ago":  ago,
	"in":   until,
	"utc":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"join": strings.Join,
}).ParseFS(assets, "assets/page.html"))

// Handler serves the page at / and its stylesheet at /assets/style.css.
// Only GET and HEAD are answered.
func Handler(cfg Config) http.Handler {
	if cfg.Refresh <= 0 {
		cfg.Refresh = 15 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /assets/style.css", http.FileServerFS(assets))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		var buf bytes.Buffer
		if err := pageTemplate.Execute(&buf, build(r.Context(), cfg)); err != nil {
			cfg.Logger.Error("status page", slog.Any("error", err))
			http.Error(w, "the status page could not be rendered", http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(buf.Bytes())
	})
	return mux
}

// view is what the template renders.
type view struct {
	TrustDomain, ReplicaID string
	Now                    time.Time
	RefreshSeconds         int
	Signer                 string // "" when the CA can sign
	BundleSequence         uint64
	KeysTimeline           template.HTML
	RootsTimeline          template.HTML
	Authorities            []authorityRow
	Root                   ca.RootRotationStatus
	Issuance               issuanceView
	Agents                 agentsView
	Federations            []federationRow
	FederationError        string
	AuditOn                bool
	AuditHead              uint64
	AuditCheckpoint        time.Time
}

type authorityRow struct {
	Kind, State, ID, Replica string
	Tainted                  bool
	NotBefore, NotAfter      time.Time
	Next                     string
	NextAt                   time.Time
}

func build(ctx context.Context, cfg Config) view {
	now := cfg.Clock.Now()
	if cfg.Issuance != nil && cfg.IssuedTotals != nil {
		cfg.Issuance.Observe(now, cfg.IssuedTotals())
	}
	v := view{TrustDomain: cfg.TrustDomain.Name(), ReplicaID: cfg.ReplicaID, Now: now, RefreshSeconds: int(cfg.Refresh / time.Second)}
	if err := cfg.CA.CheckSigner(); err != nil {
		v.Signer = err.Error()
	}
	_, v.BundleSequence = cfg.CA.Bundle()
	v.Root = cfg.CA.RootRotation()
	v.Authorities, v.KeysTimeline, v.RootsTimeline = authorities(cfg.CA, now)
	v.Issuance = issuance(cfg.Issuance, now)
	v.Agents = agents(ctx, cfg, now, v.BundleSequence)
	v.Federations, v.FederationError = federations(ctx, cfg.Store)
	if cfg.AuditHead != nil {
		v.AuditOn = true
		v.AuditHead, v.AuditCheckpoint = cfg.AuditHead()
	}
	return v
}

var kindOrder = map[ca.Kind]int{ca.KindRoot: 0, ca.KindIntermediate: 1, ca.KindJWT: 2}
var stateOrder = map[ca.State]int{ca.StateActive: 0, ca.StatePrepared: 1, ca.StateOld: 2}

// authorities lists the CA's keys with their next transitions and draws
// two timelines: roots (years) and the keys that rotate (hours).
func authorities(authority CA, now time.Time) ([]authorityRow, template.HTML, template.HTML) {
	auths := authority.Authorities()
	sort.Slice(auths, func(i, j int) bool {
		a, b := auths[i], auths[j]
		if kindOrder[a.Kind] != kindOrder[b.Kind] {
			return kindOrder[a.Kind] < kindOrder[b.Kind]
		}
		if stateOrder[a.State] != stateOrder[b.State] {
			return stateOrder[a.State] < stateOrder[b.State]
		}
		return a.NotBefore.Before(b.NotBefore)
	})
	var rows []authorityRow
	var keys, roots []timelineRow
	keyStart, keyEnd := now, now
	rootStart, rootEnd := now, now
	for _, a := range auths {
		what, at := authority.NextTransition(a)
		rows = append(rows, authorityRow{Kind: string(a.Kind), State: string(a.State), ID: a.ID, Replica: a.Replica, Tainted: a.Tainted,
			NotBefore: a.NotBefore, NotAfter: a.NotAfter, Next: what, NextAt: at})
		label := fmt.Sprintf("%s %s %s", a.Kind, a.State, shortID(a.ID))
		if a.Replica != "" && a.Replica != ca.DefaultReplicaID {
			label += " @" + a.Replica
		}
		r := timelineRow{Label: label, State: string(a.State), Tainted: a.Tainted, From: a.NotBefore, To: a.NotAfter, Next: at, NextLabel: what}
		if a.Kind == ca.KindRoot {
			roots = append(roots, r)
			rootStart, rootEnd = minTime(rootStart, a.NotBefore), maxTime(rootEnd, a.NotAfter)
			continue
		}
		keys = append(keys, r)
		keyStart, keyEnd = minTime(keyStart, a.NotBefore), maxTime(keyEnd, a.NotAfter)
	}
	pad := func(start, end time.Time) (time.Time, time.Time) {
		d := end.Sub(start) / 40
		return start.Add(-d), end.Add(d)
	}
	ks, ke := pad(keyStart, keyEnd)
	rs, re := pad(rootStart, rootEnd)
	return rows, timeline("signing keys", keys, ks, ke, now), timeline("roots", roots, rs, re, now)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// issuanceView is the last hour of X.509-SVID requests.
type issuanceView struct {
	Chart                       template.HTML
	OK, Denied, Invalid, Errors float64
	PerMinute                   float64
}

// issuance sums the hour and draws a bar a minute: signed in green,
// refused (denied, invalid) in amber, server errors in red.
func issuance(h *History, now time.Time) issuanceView {
	var v issuanceView
	if h == nil {
		return v
	}
	minutes := h.Last(now)
	peak := 1.0
	for _, m := range minutes {
		v.OK += m.Counts["ok"]
		v.Denied += m.Counts["denied"]
		v.Invalid += m.Counts["invalid"]
		v.Errors += m.Counts["error"]
		peak = max(peak, m.Counts["ok"]+m.Counts["denied"]+m.Counts["invalid"]+m.Counts["error"])
	}
	v.PerMinute = (v.OK + v.Denied + v.Invalid + v.Errors) / float64(len(minutes))
	const w, hgt, barW = 960, 120, 960 / historyMinutes
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="issuance" role="img" aria-label="X.509-SVID requests per minute, last hour" viewBox="0 0 %d %d" width="100%%">`, w, hgt+16)
	for i, m := range minutes {
		x := i * barW
		y := float64(hgt)
		for _, part := range []struct {
			class string
			n     float64
		}{{"ok", m.Counts["ok"]}, {"refused", m.Counts["denied"] + m.Counts["invalid"]}, {"error", m.Counts["error"]}} {
			if part.n <= 0 {
				continue
			}
			bh := part.n / peak * hgt
			y -= bh
			fmt.Fprintf(&b, `<rect class="%s" x="%d" y="%.1f" width="%d" height="%.1f"><title>%s: %.0f %s</title></rect>`,
				part.class, x+1, y, barW-2, bh, m.Start.UTC().Format("15:04"), part.n, part.class)
		}
	}
	fmt.Fprintf(&b, `<text class="tick-label" x="2" y="%d">%s</text>`, hgt+14, esc(minutes[0].Start.UTC().Format("15:04")))
	fmt.Fprintf(&b, `<text class="tick-label" x="%d" y="%d" text-anchor="end">%s</text>`, w-2, hgt+14, esc(minutes[len(minutes)-1].Start.UTC().Format("15:04")))
	b.WriteString(`</svg>`)
	v.Chart = template.HTML(b.String()) //nolint:gosec // built here; every text in it is escaped
	return v
}

// agentsView is the fleet: counts over every agent, rows for the first
// maxAgentRows (those needing attention first).
type agentsView struct {
	Total, Live, Behind, Banned int
	Rows                        []agentRow
	More                        int
	Error                       string
}

type agentRow struct {
	ID, Attestor      string
	LastSeen          time.Time
	Live, Banned      bool
	BundleSequence    uint64
	BundleCurrent     bool
	SVIDExpires       time.Time
	Skew              string
	attention, sortID string
}

func agents(ctx context.Context, cfg Config, now time.Time, bundleSeq uint64) agentsView {
	var v agentsView
	list, err := cfg.Store.ListAgents(ctx)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	var skews map[string]time.Duration
	if cfg.ClockSkews != nil {
		skews = cfg.ClockSkews()
	}
	for _, a := range list {
		r := agentRow{ID: a.SPIFFEID, Attestor: a.AttestationType, LastSeen: a.LastSeen, Banned: a.Banned, BundleSequence: a.BundleSequence,
			BundleCurrent: a.BundleSequence == bundleSeq, SVIDExpires: a.NotAfter, sortID: a.SPIFFEID}
		r.Live = now.Sub(a.LastSeen) <= cfg.AgentLiveness
		if d, ok := skews[a.SPIFFEID]; ok {
			r.Skew = d.Round(10 * time.Millisecond).String()
		}
		v.Total++
		switch {
		case a.Banned:
			v.Banned++
			r.attention = "2"
		case !r.Live:
			r.attention = "1"
		case !r.BundleCurrent:
			v.Behind++
			r.attention = "0"
		default:
			r.attention = "3"
		}
		if r.Live && !a.Banned {
			v.Live++
		}
		v.Rows = append(v.Rows, r)
	}
	slices.SortFunc(v.Rows, func(a, b agentRow) int {
		if c := strings.Compare(a.attention, b.attention); c != 0 {
			return c
		}
		return strings.Compare(a.sortID, b.sortID)
	})
	if len(v.Rows) > maxAgentRows {
		v.More = len(v.Rows) - maxAgentRows
		v.Rows = v.Rows[:maxAgentRows]
	}
	return v
}

type federationRow struct {
	TrustDomain, URL, Profile, LastError string
	LastRefresh                          time.Time
}

func federations(ctx context.Context, st Store) ([]federationRow, string) {
	list, err := st.ListFederations(ctx)
	if err != nil {
		return nil, err.Error()
	}
	out := make([]federationRow, 0, len(list))
	for _, f := range list {
		out = append(out, federationRow{TrustDomain: f.TrustDomain, URL: f.URL, Profile: f.Profile, LastError: f.LastError, LastRefresh: f.LastRefresh})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain < out[j].TrustDomain })
	return out, ""
}

// ago and until say how far t is from now in a few significant units.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return human(now.Sub(t)) + " ago"
}

func until(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if d := t.Sub(now); d < 0 {
		return human(-d) + " ago"
	}
	return "in " + human(t.Sub(now))
}

func human(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
