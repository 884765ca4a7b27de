package web

import "github.com/prometheus/client_golang/prometheus"

// HookRuns reports how the configured hooks ran: fn is called with the
// number of runs of every hook and result, zeros included. It is called on
// every scrape of /metrics, from request goroutines.
type HookRuns interface {
	EachRun(fn func(hook, result string, n uint64))
}

var descHookRuns = prometheus.NewDesc("webknock_hook_runs_total",
	"Runs of the hooks (on_grant, on_end, on_lockout) by result: ok, failed (exit status or could not start), timeout (killed at the deadline), dropped (never started: the queue was full).",
	[]string{"hook", "result"}, nil)

// hookCollector reads Options.HookRuns at scrape time.
type hookCollector struct{ s *Server }

func (c hookCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descHookRuns }

func (c hookCollector) Collect(ch chan<- prometheus.Metric) {
	if c.s.opts.HookRuns == nil {
		return
	}
	c.s.opts.HookRuns.EachRun(func(hook, result string, n uint64) {
		ch <- prometheus.MustNewConstMetric(descHookRuns, prometheus.CounterValue, float64(n), hook, result)
	})
}
