package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkE2EScale measures each firewall backend at scale, in network
// namespaces with the real kernel, WK_BENCH_GRANTS grants (default 5,000)
// knocked in one burst of log lines, all with the same end:
//
//   - apply-s, apply-cpu-s: the burst applied (last grant record), and the
//     CPU webknock (and the programs it runs) spent on it;
//
//   - connect-us-10-before, connect-us-N, connect-us-10-after: a granted
//     client's connect time at 10 grants, at N, and once the burst ended;
//
//   - unguarded-http-us-0, unguarded-http-us-N: an HTTP request to port 80,
//     which no sequence guards, with no grant and with N;
//
//   - knock-ms-10, knock-ms-N: one more knock, written to the log, to its
//     grant record, with 10 grants and with N;
//
//   - idle-cpu-pct: the CPU of webknock and what it runs, in percent of
//     one core, over a minute with N live grants, once the first
//     integrity check after the burst has passed: that minute holds the
//     checks of either backend (every minute or 30 s) as they are while
//     nothing changes;
//
//   - expiry-s: the N grants ending in the same second, from their end to
//     the record that the last of their entries left the kernel;
//     knock-during-expiry-ms: a knock written as they end, to its grant.
//
//     sudo WK_E2E=require go test ./cmd/webknock -run '^$' -bench E2EScale -benchtime 1x
func BenchmarkE2EScale(b *testing.B) {
	n := 5000
	if v := os.Getenv("WK_BENCH_GRANTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	// The end of a sweep of more than one chunk is logged: that is what
	// expiry-s is measured by.
	if n < 1000 {
		b.Fatalf("WK_BENCH_GRANTS=%d: want 1000 or more", n)
	}
	for _, backend := range e2eBackends {
		b.Run(backend, func(b *testing.B) {
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

// scaleWindow is the window of the benchmark's grants: long enough for
// everything measured at N grants, short enough not to wait long for the
// burst's end.
const scaleWindow = 150 * time.Second

// idleSpan is how long the idle CPU is measured: a clock tick (10 ms)
// in it is 0.017 % of a core.
const idleSpan = time.Minute

// settle is how long after the burst the idle CPU is measured: past the
// backend's first integrity check (every minute with iptables, 30 s with
// nftables).
var settle = map[string]time.Duration{"iptables": 62 * time.Second, "nftables": 32 * time.Second}

func benchScale(b *testing.B, backend string, n int) {
	b.StopTimer()
	e := newBackendE2E(b, backend)
	e.startListener()
	e.startServerOn("httpserve", "[::]:80")
	// The burst's clients share a /64 and a sequence: the caps are
	// raised for them.
	caps := fmt.Sprintf("  max_grants_per_sequence: %d\n  max_grants_per_ipv6_64: %d\n", n+100, n+100)
	cfg := e.writeConfig(e2eConf{window: scaleWindow.String(), start: "end", fwMore: caps})
	write(b, e.log, "")
	// The daemon logs to a file, read after the fact: a test that read
	// each record as it came would compete with it for the CPU.
	d := startLogged(b, e, cfg)
	appendLog := func(s string) time.Time {
		b.Helper()
		f, err := os.OpenFile(e.log, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		at := time.Now()
		if _, err := f.WriteString(s); err != nil {
			b.Fatal(err)
		}
		return at
	}
	client := cliV6[0]
	// The least median of nine rounds, the round least disturbed by
	// anything else on the host.
	least := func(mode, args string) float64 {
		b.Helper()
		best := 0.0
		for range 9 {
			cmd := e.in(e.cli, os.Args[0], args)
			cmd.Env = append(os.Environ(), helperEnv+"="+mode)
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("%s %s: %v", mode, args, err)
			}
			us, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
			if best == 0 || us < best {
				best = us
			}
		}
		return best
	}
	connect := func() float64 { return least("connlat", client+" "+net.JoinHostPort(srvV6, "22")+" 200") }
	web := func() float64 { return least("httplat", client+" http://"+net.JoinHostPort(srvV6, "80")+"/ 200") }
	grants := 0
	// knock writes one knock and returns the time to its grant record.
	knock := func(src string) time.Duration {
		b.Helper()
		at := appendLog(burstKnock(src, time.Now()))
		grants++
		return d.waitRecords(b, "grant", grants).Sub(at)
	}
	web0 := web()

	var few strings.Builder
	few.WriteString(burstKnock(client, time.Now()))
	for i := range 9 {
		few.WriteString(burstKnock(burstSource(i), time.Now()))
	}
	appendLog(few.String())
	grants += 10
	d.waitRecords(b, "grant", grants)
	lat10 := connect()
	knock10 := knock(burstSource(n + 3))

	var burst strings.Builder
	now := time.Now()
	for i := 9; i < n-1; i++ {
		burst.WriteString(burstKnock(burstSource(i), now))
	}
	ends := now.Truncate(time.Second).Add(scaleWindow)
	applySelf, applyChild := cpuTicks(b, d.pid())
	b.StartTimer()
	start := appendLog(burst.String())
	grants += n - 10
	last := d.waitRecords(b, "grant", grants)
	b.StopTimer()
	applied := last.Sub(start)
	self1, child1 := cpuTicks(b, d.pid())
	applyCPU := float64(self1-applySelf+child1-applyChild) / 100

	// Idle: nothing is written to the log. After the burst's after-effects
	// (the state file's last write, the kernel growing its tables, the
	// first integrity check, which lists what the burst changed), the CPU
	// over a minute.
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-b.Context().Done():
		}
	}
	pause(settle[backend])
	self1, child1 = cpuTicks(b, d.pid())
	pause(idleSpan)
	self2, child2 := cpuTicks(b, d.pid())
	latN := connect()
	webN := web()
	knockN := knock(burstSource(n + 1))
	if time.Until(ends) < time.Second {
		b.Fatalf("the measures at %d grants outlasted the window of %v", n, scaleWindow)
	}

	// The burst ends: a knock written just after.
	pause(time.Until(ends) + 20*time.Millisecond)
	during := knock(burstSource(n + 2))
	swept := d.waitRecords(b, "ended grants' entries deleted", 1)

	// At 10 grants again: the client knocks anew.
	knock(client)
	lat10After := connect()

	// Clock ticks are 10 ms.
	b.ReportMetric(applied.Seconds(), "apply-s")
	b.ReportMetric(applyCPU, "apply-cpu-s")
	b.ReportMetric(lat10, "connect-us-10-before")
	b.ReportMetric(latN, fmt.Sprintf("connect-us-%d", n))
	b.ReportMetric(lat10After, "connect-us-10-after")
	b.ReportMetric(web0, "unguarded-http-us-0")
	b.ReportMetric(webN, fmt.Sprintf("unguarded-http-us-%d", n))
	b.ReportMetric(float64(knock10.Microseconds())/1000, "knock-ms-10")
	b.ReportMetric(float64(knockN.Microseconds())/1000, fmt.Sprintf("knock-ms-%d", n))
	b.ReportMetric(float64(self2-self1+child2-child1)/100/idleSpan.Seconds()*100, "idle-cpu-pct")
	b.ReportMetric(swept.Sub(ends).Seconds(), "expiry-s")
	b.ReportMetric(float64(during.Microseconds())/1000, "knock-during-expiry-ms")
	stop(d.cmd)
	b.StartTimer()
}

// loggedDaemon is a `webknock run` whose JSON log goes to a file.
type loggedDaemon struct {
	cmd  *exec.Cmd
	path string
}

func (d *loggedDaemon) pid() int { return d.cmd.Process.Pid }

// startLogged starts the daemon on cfg, logging to a file, and waits until
// it runs.
func startLogged(b *testing.B, e *e2e, cfg string) *loggedDaemon {
	b.Helper()
	return startLoggedIn(b, e, e.srv, cfg, "daemon.log")
}

// startLoggedIn is startLogged in namespace ns, logging to name in the
// scratch directory.
func startLoggedIn(b *testing.B, e *e2e, ns, cfg, name string) *loggedDaemon {
	b.Helper()
	d := &loggedDaemon{path: filepath.Join(e.dir, name)}
	f, err := os.Create(d.path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d.cmd = e.in(ns, webknockBinary(b), "run", "-c", cfg, "--json-logs")
	d.cmd.Stderr = f
	if err := d.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stop(d.cmd) })
	d.waitRecords(b, "webknock running", 1)
	return d
}

// waitRecords waits until the log holds count records with message msg
// and returns the time the last of them carries. It reads what the file
// gained every 50 ms (a benchmark's wait, not a test's), counting the
// records by their text: parsing each would compete with the daemon for
// the CPU.
func (d *loggedDaemon) waitRecords(b *testing.B, msg string, count int) time.Time {
	b.Helper()
	f, err := os.Open(d.path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	needle := []byte(`"msg":"` + msg + `",`)
	deadline := time.Now().Add(15 * time.Minute)
	r := bufio.NewReaderSize(f, 1<<20)
	seen := 0
	for {
		line, err := r.ReadBytes('\n')
		if err == nil {
			if bytes.Contains(line, needle) {
				if seen++; seen == count {
					var rec struct {
						Time time.Time `json:"time"`
					}
					if err := json.Unmarshal(line, &rec); err != nil {
						b.Fatalf("log record %s: %v", line, err)
					}
					return rec.Time
				}
			}
			continue
		}
		if err != io.EOF {
			b.Fatal(err)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d %q records in the log after 15 minutes", seen, count, msg)
		}
		// A line being written is read again whole.
		if _, err := f.Seek(-int64(len(line)), io.SeekCurrent); err != nil {
			b.Fatal(err)
		}
		r.Reset(f)
		time.Sleep(50 * time.Millisecond)
	}
}
