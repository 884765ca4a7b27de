package web

import "github.com/prometheus/client_golang/prometheus"

var (
	descSyslog = prometheus.NewDesc("webknock_syslog_messages_total",
		"Syslog messages by listener and result: received, accepted (their body became a log line), refused (a sender not allowed, or a tcp connection refused), oversized, truncated, malformed (none of them parsed), dropped (by the kernel on a full receive buffer).",
		[]string{"listener", "result"}, nil)
	descFleet = prometheus.NewDesc("webknock_fleet_records_total",
		"Grant records of the fleet's bus by role and result: a detector's published, or why not (bus_unavailable, one_time_used, expired); an enforcer's applied, revoked, or why refused (bad_signature, unknown_key, group, malformed, expired, beyond_window, sequence, firewall).",
		[]string{"role", "result"}, nil)
)

// countsCollector reads counters by two labels (Options.SyslogCounts,
// Options.FleetCounts) at scrape time.
type countsCollector struct {
	desc   *prometheus.Desc
	counts func() map[string]map[string]uint64 // nil: none
}

func (c countsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c countsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.counts == nil {
		return
	}
	for a, results := range c.counts() {
		for result, n := range results {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), a, result)
		}
	}
}
