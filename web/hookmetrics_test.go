package web

import (
	"strings"
	"testing"
)

type fakeHookRuns map[[2]string]uint64

func (f fakeHookRuns) EachRun(fn func(hook, result string, n uint64)) {
	for _, h := range []string{"on_grant", "on_end", "on_lockout"} {
		for _, r := range []string{"ok", "failed", "timeout", "dropped"} {
			fn(h, r, f[[2]string{h, r}])
		}
	}
}

func TestHookMetrics(t *testing.T) {
	tests := []struct {
		name string
		runs HookRuns
		want []string
		not  []string
	}{
		{name: "counts", runs: fakeHookRuns{{"on_grant", "ok"}: 3, {"on_end", "timeout"}: 1, {"on_lockout", "dropped"}: 2},
			want: []string{
				"# TYPE webknock_hook_runs_total counter",
				`webknock_hook_runs_total{hook="on_grant",result="ok"} 3`,
				`webknock_hook_runs_total{hook="on_grant",result="failed"} 0`,
				`webknock_hook_runs_total{hook="on_end",result="timeout"} 1`,
				`webknock_hook_runs_total{hook="on_lockout",result="dropped"} 2`,
			}},
		{name: "no hooks", not: []string{"webknock_hook_runs_total"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, "", func(o *Options) { o.HookRuns = tt.runs })
			body := do(t, tcpHandler(f.s), "GET", "/metrics", nil).Body.String()
			for _, w := range tt.want {
				if !strings.Contains(body, w+"\n") {
					t.Errorf("GET /metrics lacks %q", w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(body, n) {
					t.Errorf("GET /metrics has %q", n)
				}
			}
		})
	}
}
