package web

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

//go:embed assets/page.html assets/style.css
var assets embed.FS

var (
	pageTemplate = template.Must(template.ParseFS(assets, "assets/page.html"))
	styleCSS     = mustRead("assets/style.css")
)

func mustRead(name string) []byte {
	b, err := assets.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return b
}

const (
	timeLayout = "2006-01-02 15:04:05"
	isoLayout  = time.RFC3339
)

// pageRefresh is how often the status page reloads itself, so that its
// time left stays true without a script.
const pageRefresh = 30 * time.Second

type pageView struct {
	Now, NowISO string
	Refresh     int // seconds until the page reloads
	Healthy     bool
	Health      string
	Problems    []string
	Grants      []grantView
	Lockouts    []lockoutView
	HasAdmin    bool // lockouts are known
	Events      []eventView
	RecentMax   int
	Counters    []pair
	Checks      []pair
}

type grantView struct{ IP, Sequence, Ports, Until, UntilISO, Left, Origin string }

type lockoutView struct{ IP, Until, UntilISO, Left string }

type eventView struct{ Time, TimeISO, Event, IP, Sequence, Detail string }

type pair struct{ Name, Value string }

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, s.view()); err != nil {
		s.log.Error("web: render status page", keyErr, err)
		http.Error(w, "cannot render the status page; see the server's log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(buf.Bytes())
}

func serveCSS(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Write(styleCSS)
}

func (s *Server) view() pageView {
	now := s.now()
	v := pageView{Now: now.UTC().Format(timeLayout), NowISO: now.UTC().Format(isoLayout), RecentMax: s.opts.RecentEvents}
	v.Problems = s.problems()
	v.Healthy, v.Health = len(v.Problems) == 0, "ok"
	if !v.Healthy {
		v.Health = "unhealthy"
	}
	grants := s.fw.Grants()
	for _, g := range grants {
		v.Grants = append(v.Grants, grantView{
			IP:       sourceString(g),
			Sequence: g.Sequence,
			Ports:    joinPorts(g.Ports),
			Until:    g.Until.UTC().Format(timeLayout),
			UntilISO: g.Until.UTC().Format(isoLayout),
			Left:     timeLeft(g.Until.Sub(now)),
			Origin:   g.From(),
		})
	}
	v.HasAdmin = s.opts.Admin != nil
	lockouts := s.sortedLockouts()
	ends := make([]time.Time, 0, len(v.Grants)+len(lockouts))
	for _, l := range lockouts {
		v.Lockouts = append(v.Lockouts, lockoutView{
			IP:       l.Client.String(),
			Until:    l.Until.UTC().Format(timeLayout),
			UntilISO: l.Until.UTC().Format(isoLayout),
			Left:     timeLeft(l.Until.Sub(now)),
		})
		ends = append(ends, l.Until)
	}
	for _, g := range grants {
		ends = append(ends, g.Until)
	}
	v.Refresh = refreshSeconds(now, ends)
	for _, e := range s.recent.newestFirst() {
		v.Events = append(v.Events, eventView{
			Time:     e.Time.UTC().Format(timeLayout),
			TimeISO:  e.Time.UTC().Format(isoLayout),
			Event:    e.Kind.String(),
			IP:       addrString(e.Client),
			Sequence: e.Sequence,
			Detail:   withInput(detail(&e), e.Input),
		})
	}
	h := s.fw.Health()
	clients, evicted := s.trackerStats()
	v.Counters = []pair{
		{"lines read", count(s.read.Load())},
		{"lines parsed", count(s.parsed.Load())},
		{"lines skipped", count(s.skipped.Load())},
		{"grants", count(s.kinds[kindIndex(knock.KindGrant)].Load())},
		{"lockouts", count(s.kinds[kindIndex(knock.KindLockout)].Load())},
		{"one-time URLs reused", count(s.kinds[kindIndex(knock.KindReused)].Load())},
		{"grants closed by their client", count(s.kinds[kindIndex(knock.KindClose)].Load())},
		{"knocks denied by policy", count(s.kinds[kindIndex(knock.KindDenied)].Load())},
		{"firewall failures", count(h.Failures)},
		{"grants refused: table full", count(h.Refused)},
		{"grants refused by caps", count(capped(h))},
		{"active grants", strconv.Itoa(len(v.Grants))},
		{"clients in progress", strconv.Itoa(clients)},
		{"clients evicted", count(evicted)},
	}
	following := "not reported"
	if s.opts.Following != nil {
		following = yesNo(s.opts.Following())
	}
	fwState := "in sync"
	if !h.InSync {
		fwState = "out of sync"
	}
	revoke := "enabled"
	if s.currentToken() == "" {
		revoke = "disabled (no token)"
	}
	socket := "off"
	s.mu.Lock()
	if p := s.lns.Socket(); p != "" {
		socket = p
	}
	s.mu.Unlock()
	v.Checks = []pair{
		{"following logs", following},
		{"firewall", fwState},
		{"pending rule deletes", strconv.Itoa(h.Pending)},
		{"revoke over HTTP", revoke},
		{"admin socket", socket},
	}
	return v
}

// refreshSeconds is when the page should reload: every pageRefresh, or a
// second after the first of ends, if sooner, so that an ended grant or
// lockout leaves the page when it ends.
func refreshSeconds(now time.Time, ends []time.Time) int {
	d := pageRefresh
	for _, end := range ends {
		if left := end.Sub(now); left > 0 && left+time.Second < d {
			d = left + time.Second
		}
	}
	return int((d + time.Second - 1) / time.Second)
}

// detail is what an event adds to its kind, IP and sequence.
func detail(e *knock.Event) string {
	switch e.Kind {
	case knock.KindStep:
		return "step " + strconv.Itoa(e.Step)
	case knock.KindGrant:
		d := "until " + e.Until.UTC().Format(timeLayout)
		if e.Source.IsValid() && e.Source.Bits() != e.Client.BitLen() {
			d += " to " + e.Source.String()
		}
		if len(e.Ports) > 0 {
			d += ", " + strings.Join(e.Ports, " ")
		}
		return d
	case knock.KindLockout:
		return "until " + e.Until.UTC().Format(timeLayout)
	case knock.KindReused:
		return "time step " + strconv.FormatInt(e.TimeStep, 10) + " had granted already"
	case knock.KindClose:
		return "grant of " + firewall.FormatSource(e.Source) + " ended by its client"
	case knock.KindDenied:
		return "refused by " + e.Reason
	}
	return ""
}

// withInput adds to an event's detail the input its line came from.
func withInput(d, input string) string {
	switch {
	case input == "":
		return d
	case d == "":
		return "from " + input
	}
	return d + "; from " + input
}

// timeLeft writes d to the second, largest unit first: "1h 0m 5s", "9m 12s", "42s".
func timeLeft(d time.Duration) string {
	if d <= 0 {
		return "0s"
	}
	sec := int64(d / time.Second)
	h, m, s := sec/3600, sec/60%60, sec%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh %dm %ds", h, m, s)
	case m > 0:
		return fmt.Sprintf("%dm %ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

func joinPorts(ps []firewall.Port) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = p.String()
	}
	return strings.Join(parts, " ")
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func count(n uint64) string { return strconv.FormatUint(n, 10) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// capped is the grants the caps refused, all caps together.
func capped(h firewall.Health) uint64 {
	var n uint64
	for _, c := range h.Capped {
		n += c
	}
	return n
}
