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
// namespaces with the real kernel: WK_BENCH_GRANTS grants (default
// 10,000) knocked in one burst of log lines are applied; a granted
// client's connect time at 10 grants, at that many, and at 10 again once
// the burst's are revoked; the idle CPU of webknock (and of the programs it runs) over 10 s
// with them all live.
//
//	sudo WK_E2E=require go test ./cmd/webknock -run '^$' -bench E2EScale -benchtime 1x
func BenchmarkE2EScale(b *testing.B) {
	n := 10000
	if v := os.Getenv("WK_BENCH_GRANTS"); v != "" {
		n, _ = strconv.Atoi(v)
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

func benchScale(b *testing.B, backend string, n int) {
	b.StopTimer()
	e := newBackendE2E(b, backend)
	e.startListener()
	cfg := e.writeConfig(e2eConf{window: "1h", start: "end"})
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
	var few strings.Builder
	few.WriteString(burstKnock(client, time.Now()))
	for i := range 9 {
		few.WriteString(burstKnock(burstSource(i), time.Now()))
	}
	appendLog(few.String())
	d.waitRecords(b, "grant", 10)
	dst := net.JoinHostPort(srvV6, "22")
	// The connect time: the least median of nine rounds of 200 connects,
	// the round least disturbed by anything else on the host.
	connect := func() float64 {
		b.Helper()
		best := 0.0
		for range 9 {
			cmd := e.in(e.cli, os.Args[0], client+" "+dst+" 200")
			cmd.Env = append(os.Environ(), helperEnv+"=connlat")
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("connect from %s: %v", client, err)
			}
			us, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
			if best == 0 || us < best {
				best = us
			}
		}
		return best
	}
	lat10 := connect()

	var burst strings.Builder
	now := time.Now()
	for i := 9; i < n-1; i++ {
		burst.WriteString(burstKnock(burstSource(i), now))
	}
	applySelf, applyChild := cpuTicks(b, d.pid())
	b.StartTimer()
	start := appendLog(burst.String())
	last := d.waitRecords(b, "grant", n)
	b.StopTimer()
	applied := last.Sub(start)
	self1, child1 := cpuTicks(b, d.pid())
	applyCPU := float64(self1-applySelf+child1-applyChild) / 100

	// Idle: nothing is written to the log. After 2 s for the burst's
	// after-effects (the state file's last write, the kernel growing its
	// tables), the CPU over 10 s; then the connect time.
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-b.Context().Done():
		}
	}
	pause(2 * time.Second)
	self1, child1 = cpuTicks(b, d.pid())
	pause(10 * time.Second)
	self2, child2 := cpuTicks(b, d.pid())
	latN := connect()
	// Clock ticks are 10 ms.
	b.ReportMetric(applied.Seconds(), "apply-s")
	b.ReportMetric(applyCPU, "apply-cpu-s")
	b.ReportMetric(lat10, "connect-us-10-before")
	b.ReportMetric(latN, fmt.Sprintf("connect-us-%d", n))
	b.ReportMetric(float64(self2-self1+child2-child1)/100, "idle-cpu-s-per-10s")
	// And at 10 grants again: the burst's grants revoked at once (their
	// network), the same client measured, to pair with the first. A revoke
	// that outlasts the command's wait (iptables deletes one rule per run)
	// leaves this one out.
	out, err := e.in(e.srv, webknockBinary(b), "revoke", "-c", cfg, "2001:db8:1::/48").CombinedOutput()
	if err != nil {
		b.Logf("revoke of the burst's grants: %v: %s; no connect-us-10-after", err, out)
	} else {
		d.waitRecords(b, "grant removed", n-1)
		b.ReportMetric(connect(), "connect-us-10-after")
	}
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
	d := &loggedDaemon{path: filepath.Join(e.dir, "daemon.log")}
	f, err := os.Create(d.path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d.cmd = e.in(e.srv, webknockBinary(b), "run", "-c", cfg, "--json-logs")
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
