package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkE2EScale measures each firewall backend at scale, in network
// namespaces with the real kernel: WK_BENCH_GRANTS grants (default
// 10,000) knocked in one burst of log lines are applied; a granted
// client's connect time at 10 grants and at that many; the idle CPU of
// webknock (and of the programs it runs) with them all live.
//
//	sudo WK_E2E=require go test ./cmd/webknock -run '^$' -bench E2EScale -benchtime 1x
func BenchmarkE2EScale(b *testing.B) {
	n := 10000
	if v := os.Getenv("WK_BENCH_GRANTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	for _, backend := range e2eBackends {
		b.Run(backend, func(b *testing.B) {
			if backend == "nftables" {
				requireE2E(b, "nft")
			}
			for b.Loop() {
				benchScale(b, backend, n)
			}
		})
	}
}

// burstKnock is the log lines of a whole knock of the ssh sequence from
// src, logged at now.
func burstKnock(src string, now time.Time) string {
	var sb strings.Builder
	ts := now.Format("02/Jan/2006:15:04:05 -0700")
	for _, p := range fullKnock {
		fmt.Fprintf(&sb, "%s - - [%s] \"GET %s HTTP/1.1\" 404 0 \"-\" \"bench\"\n", src, ts, p)
	}
	return sb.String()
}

// burstSource is the n-th address of the burst's clients: IPv6, in the
// client's family, inside the documentation prefix (nothing is sent to
// them; they are only granted).
func burstSource(i int) string { return fmt.Sprintf("2001:db8:1::%x:%x", i>>16, i&0xffff) }

func benchScale(b *testing.B, backend string, n int) {
	b.StopTimer()
	e := newE2E(b)
	e.backend = backend
	e.startListener()
	cfg := e.writeConfig(e2eConf{window: "1h", start: "end"})
	write(b, e.log, "")
	d := e.startDaemonCmd(e.in(e.srv, webknockBinary(b), "run", "-c", cfg, "--json-logs"))
	appendLog := func(s string) {
		b.Helper()
		f, err := os.OpenFile(e.log, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			b.Fatal(err)
		}
	}
	granted := func(count int) {
		b.Helper()
		for range count {
			d.wait(b, "grant", "")
		}
	}
	client := cliV6[0]
	var few strings.Builder
	few.WriteString(burstKnock(client, time.Now()))
	for i := range 9 {
		few.WriteString(burstKnock(burstSource(i), time.Now()))
	}
	appendLog(few.String())
	granted(10)
	dst := net.JoinHostPort(srvV6, "22")
	connect := func() float64 {
		b.Helper()
		cmd := e.in(e.cli, os.Args[0], client+" "+dst+" 500")
		cmd.Env = append(os.Environ(), helperEnv+"=connlat")
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("connect from %s: %v", client, err)
		}
		us, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
		return us
	}
	lat10 := connect()

	var burst strings.Builder
	now := time.Now()
	for i := 9; i < n-1; i++ {
		burst.WriteString(burstKnock(burstSource(i), now))
	}
	self0, child0 := cpuTicks(b, d.cmd.Process.Pid)
	start := time.Now()
	b.StartTimer()
	appendLog(burst.String())
	granted(n - 10)
	b.StopTimer()
	applied := time.Since(start)
	self1, child1 := cpuTicks(b, d.cmd.Process.Pid)
	latN := connect()

	idle := 10 * time.Second
	select {
	case <-time.After(idle):
	case <-b.Context().Done():
	}
	self2, child2 := cpuTicks(b, d.cmd.Process.Pid)
	// Clock ticks are 10 ms.
	b.ReportMetric(applied.Seconds(), "apply-s")
	b.ReportMetric(float64(self1-self0+child1-child0)/100, "apply-cpu-s")
	b.ReportMetric(lat10, "connect-us-10")
	b.ReportMetric(latN, fmt.Sprintf("connect-us-%d", n))
	b.ReportMetric(float64(self2-self1+child2-child1)/100, "idle-cpu-s-per-10s")
	stop(d.cmd)
	b.StartTimer()
}
