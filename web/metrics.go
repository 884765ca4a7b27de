package web

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/webknock/webknock/firewall"
)

// metrics is the server's own registry (never the global one, so two
// servers in one test binary do not collide) and its series.
type metrics struct {
	reg       *prometheus.Registry
	lines     *prometheus.CounterVec
	skipped   *prometheus.CounterVec
	rotations *prometheus.CounterVec
	events    [kindCount]prometheus.Counter // indexed by kindIndex; [0] is nil

	reloadOK, reloadFailed prometheus.Counter

	refusedTotal, refusedPerAddr prometheus.Counter

	mu    sync.RWMutex
	files map[string]*fileCounters
}

func newMetrics(s *Server) (*metrics, error) {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		lines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "webknock_lines_total",
			Help: "Access log lines by source (file: a followed file, or syslog:LISTEN) and result: read (every line), parsed (into a request), skipped (refused). Only lines examined are parsed or skipped: those holding a knock path, and the first of each read.",
		}, []string{"file", "result"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "webknock_lines_skipped_total",
			Help: "Access log lines skipped, by source (file: a followed file, or syslog:LISTEN) and reason.",
		}, []string{"file", "reason"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "webknock_log_rotations_total",
			Help: "Rotations of access logs noticed, by file.",
		}, []string{"file"}),
		files: map[string]*fileCounters{},
	}
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "webknock_events_total",
		Help: "Knock events by kind: step, reset, timeout, grant, lockout.",
	}, []string{"event"})
	for _, k := range kinds {
		m.events[kindIndex(k)] = events.WithLabelValues(k.String())
	}
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "webknock_reloads_total",
		Help: "Configuration reloads by result: ok (applied) or failed (refused, the running one kept).",
	}, []string{"result"})
	m.reloadOK = reloads.WithLabelValues("ok")
	m.reloadFailed = reloads.WithLabelValues("failed")
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "webknock_web_connections_refused_total",
		Help: "TCP connections to web.listen closed on accept, by the limit they exceeded: total or per_address.",
	}, []string{"limit"})
	m.refusedTotal = refused.WithLabelValues(limitTotal)
	m.refusedPerAddr = refused.WithLabelValues(limitPerAddr)
	open := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "webknock_web_connections_open",
		Help: "TCP connections to web.listen open now.",
	}, func() float64 { return float64(s.conns.Open()) })

	for _, c := range []prometheus.Collector{
		m.lines, m.skipped, m.rotations, events, reloads, refused, open,
		stateCollector{s}, hookCollector{s}, countsCollector{descSyslog, s.opts.SyslogCounts}, countsCollector{descFleet, s.opts.FleetCounts},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := m.reg.Register(c); err != nil {
			return nil, fmt.Errorf("web: register metrics: %w", err)
		}
	}
	return m, nil
}

// refused is the counter of connections refused for limit.
func (m *metrics) refused(limit string) prometheus.Counter {
	if limit == limitTotal {
		return m.refusedTotal
	}
	return m.refusedPerAddr
}

// file returns the counters of one log file, creating them on its first line.
func (m *metrics) file(name string) *fileCounters {
	m.mu.RLock()
	f, ok := m.files[name]
	m.mu.RUnlock()
	if ok {
		return f
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if f, ok = m.files[name]; !ok {
		f = &fileCounters{
			read:    m.lines.WithLabelValues(name, "read"),
			parsed:  m.lines.WithLabelValues(name, "parsed"),
			skipped: m.lines.WithLabelValues(name, "skipped"),
			name:    name,
			vec:     m.skipped,
			reasons: map[string]prometheus.Counter{},
		}
		m.files[name] = f
	}
	return f
}

var (
	descGrants = prometheus.NewDesc("webknock_grants_active",
		"Grants the firewall holds now.", nil, nil)
	descFailures = prometheus.NewDesc("webknock_firewall_failures_total",
		"Failed iptables calls since start, retries included.", nil, nil)
	descPending = prometheus.NewDesc("webknock_firewall_pending_deletes",
		"Rules whose delete failed and is retried in the background.", nil, nil)
	descRefusedGrants = prometheus.NewDesc("webknock_firewall_grants_refused_total",
		"New grants refused, by the bound that refused them: max_grants (the table was full), or a cap on the live grants of one sequence or network (max_grants_per_sequence, max_grants_per_ipv4_24, max_grants_per_ipv6_64).",
		[]string{"limit"}, nil)
	descInSync = prometheus.NewDesc("webknock_firewall_in_sync",
		"1 when the kernel holds exactly the rules the grants describe.", nil, nil)
	descFollowing = prometheus.NewDesc("webknock_following",
		"1 when the access logs are being followed (absent when not reported).", nil, nil)
	descClients = prometheus.NewDesc("webknock_knock_clients",
		"Clients in the knock table (progress, failures or lockouts on record).", nil, nil)
	descEvictions = prometheus.NewDesc("webknock_knock_evictions_total",
		"Clients evicted from the full knock table.", nil, nil)
)

// stateCollector reads the firewall, the follower and the tracker at scrape
// time, each once per scrape.
type stateCollector struct{ s *Server }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGrants, descFailures, descPending, descRefusedGrants, descInSync, descFollowing, descClients, descEvictions} {
		ch <- d
	}
}

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	h := s.fw.Health()
	ch <- prometheus.MustNewConstMetric(descGrants, prometheus.GaugeValue, float64(len(s.fw.Grants())))
	ch <- prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, float64(h.Failures))
	ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(h.Pending))
	ch <- prometheus.MustNewConstMetric(descRefusedGrants, prometheus.CounterValue, float64(h.Refused), "max_grants")
	for c, n := range h.Capped {
		ch <- prometheus.MustNewConstMetric(descRefusedGrants, prometheus.CounterValue, float64(n), firewall.Cap(c).String())
	}
	ch <- prometheus.MustNewConstMetric(descInSync, prometheus.GaugeValue, b2f(h.InSync))
	if s.opts.Following != nil {
		ch <- prometheus.MustNewConstMetric(descFollowing, prometheus.GaugeValue, b2f(s.opts.Following()))
	}
	clients, evicted := s.trackerStats()
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(clients))
	ch <- prometheus.MustNewConstMetric(descEvictions, prometheus.CounterValue, float64(evicted))
}

func (s *Server) trackerStats() (clients int, evicted uint64) {
	if s.opts.Tracker == nil {
		return 0, 0
	}
	return s.opts.Tracker.Clients(), s.opts.Tracker.Evicted()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
