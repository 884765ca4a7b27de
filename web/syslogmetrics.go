package web

import "github.com/prometheus/client_golang/prometheus"

var descSyslog = prometheus.NewDesc("webknock_syslog_messages_total",
	"Syslog messages by listener and result: received, accepted (their body became a log line), refused (a sender not allowed, or a tcp connection refused), oversized, truncated, malformed (none of them parsed), dropped (by the kernel on a full receive buffer).",
	[]string{"listener", "result"}, nil)

// syslogCollector reads Options.SyslogCounts at scrape time.
type syslogCollector struct{ s *Server }

func (c syslogCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descSyslog }

func (c syslogCollector) Collect(ch chan<- prometheus.Metric) {
	if c.s.opts.SyslogCounts == nil {
		return
	}
	for ln, results := range c.s.opts.SyslogCounts() {
		for result, n := range results {
			ch <- prometheus.MustNewConstMetric(descSyslog, prometheus.CounterValue, float64(n), ln, result)
		}
	}
}
