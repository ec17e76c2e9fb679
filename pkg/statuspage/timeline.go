package statuspage

import (
	"fmt"
	"html/template"
	"strings"
	"time"
)

// timelineRow is one authority on a time axis.
type timelineRow struct {
	Label     string
	State     string // prepared, active, old: the bar's class
	Tainted   bool
	From, To  time.Time
	Next      time.Time // the next scheduled transition, zero for none
	NextLabel string
}

// Geometry of a timeline, in SVG user units.
const (
	tlWidth   = 960
	tlLabelW  = 230
	tlRowH    = 22
	tlAxisH   = 28
	tlPadding = 8
)

// timeline draws rows on a shared time axis from start to end, with a line
// at now: each authority a bar from NotBefore to NotAfter in its state's
// colour, its next transition a diamond. It is plain SVG, built here so
// that the page needs no script.
func timeline(title string, rows []timelineRow, start, end, now time.Time) template.HTML {
	if len(rows) == 0 || !end.After(start) {
		return ""
	}
	span := end.Sub(start).Seconds()
	x := func(t time.Time) float64 {
		f := t.Sub(start).Seconds() / span
		return tlLabelW + min(max(f, 0), 1)*(tlWidth-tlLabelW-tlPadding)
	}
	height := tlAxisH + len(rows)*tlRowH + tlPadding
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="timeline" role="img" aria-label="%s" viewBox="0 0 %d %d" width="100%%">`, esc(title), tlWidth, height)
	for _, tick := range ticks(start, end) {
		tx := x(tick)
		fmt.Fprintf(&b, `<line class="tick" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`, tx, tlAxisH-6, tx, height-tlPadding)
		fmt.Fprintf(&b, `<text class="tick-label" x="%.1f" y="%d" text-anchor="middle">%s</text>`, tx, tlAxisH-10, esc(tickLabel(tick, end.Sub(start))))
	}
	for i, r := range rows {
		y := tlAxisH + i*tlRowH
		fmt.Fprintf(&b, `<g class="authority state-%s" data-state="%s">`, esc(r.State), esc(r.State))
		fmt.Fprintf(&b, `<text class="row-label" x="4" y="%d">%s</text>`, y+15, esc(r.Label))
		x1, x2 := x(r.From), x(r.To)
		class := "bar"
		if r.Tainted {
			class += " tainted"
		}
		fmt.Fprintf(&b, `<rect class="%s" x="%.1f" y="%d" width="%.1f" height="%d" rx="3"><title>%s: %s to %s</title></rect>`,
			class, x1, y+4, max(x2-x1, 2), tlRowH-8, esc(r.Label), esc(r.From.UTC().Format(time.RFC3339)), esc(r.To.UTC().Format(time.RFC3339)))
		if !r.Next.IsZero() && !r.Next.Before(start) && !r.Next.After(end) {
			nx, cy := x(r.Next), y+tlRowH/2
			fmt.Fprintf(&b, `<path class="next" d="M %.1f %d l 6 6 l -6 6 l -6 -6 z"><title>%s at %s</title></path>`,
				nx, cy-6, esc(r.NextLabel), esc(r.Next.UTC().Format(time.RFC3339)))
		}
		b.WriteString(`</g>`)
	}
	nowX := x(now)
	fmt.Fprintf(&b, `<line class="now" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>`, nowX, tlAxisH-6, nowX, height-tlPadding)
	fmt.Fprintf(&b, `<text class="now-label" x="%.1f" y="%d" text-anchor="middle">now</text>`, nowX, height)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built here; every text in it is escaped
}

func esc(s string) string { return template.HTMLEscapeString(s) }

// ticks are about six round times between start and end.
func ticks(start, end time.Time) []time.Time {
	span := end.Sub(start)
	steps := []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour,
		24 * time.Hour, 7 * 24 * time.Hour, 30 * 24 * time.Hour, 91 * 24 * time.Hour, 365 * 24 * time.Hour}
	step := steps[len(steps)-1]
	for _, s := range steps {
		if span/s <= 7 {
			step = s
			break
		}
	}
	var out []time.Time
	for t := start.Truncate(step).Add(step); t.Before(end) && len(out) < 12; t = t.Add(step) {
		out = append(out, t)
	}
	return out
}

func tickLabel(t time.Time, span time.Duration) string {
	t = t.UTC()
	switch {
	case span <= 2*24*time.Hour:
		return t.Format("15:04")
	case span <= 60*24*time.Hour:
		return t.Format("Jan 2 15:04")
	}
	return t.Format("2006-01-02")
}
