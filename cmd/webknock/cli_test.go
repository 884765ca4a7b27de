package main

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandLine(t *testing.T) {
	example := "../../testdata/example.yaml"
	exampleLog := "../../testdata/example.log"
	tests := []struct {
		name     string
		args     []string
		stdin    string
		code     int
		stdout   string // substring
		stderr   string // substring
		noStdout bool
	}{
		{name: "no command", args: nil, code: exitUsage, stderr: "Commands:", noStdout: true},
		{name: "help", args: []string{"--help"}, code: exitOK, stdout: "replay"},
		{name: "unknown command", args: []string{"frobnicate"}, code: exitUsage, stderr: `unknown command "frobnicate"`},
		{name: "version", args: []string{"version"}, code: exitOK, stdout: "webknock "},
		{name: "replay help", args: []string{"replay", "--help"}, code: exitOK, stdout: "Example:\n  webknock replay -c"},
		{name: "check help", args: []string{"check", "-h"}, code: exitOK, stdout: "--config FILE"},
		{name: "bad flag", args: []string{"replay", "--bogus"}, code: exitUsage, stderr: "unknown flag: --bogus"},
		{name: "replay without config", args: []string{"replay", exampleLog}, code: exitUsage, stderr: "-c FILE is required"},
		{name: "replay without logs", args: []string{"replay", "-c", example}, code: exitUsage, stderr: "name at least one LOG"},
		{name: "replay missing log", args: []string{"replay", "-c", example, "/nonexistent/access.log"}, code: exitFail, stderr: "no such file"},
		{name: "replay table", args: []string{"replay", "-c", example, exampleLog}, code: exitOK,
			stdout: "2026-11-22T19:01:30Z  grant    203.0.113.7      ssh         until 2026-11-22T19:11:30Z 22/tcp", stderr: "3 grants"},
		{name: "replay stdin", args: []string{"replay", "--json", "-c", example, "-"}, code: exitOK,
			stdin:  `203.0.113.9 - - [22/Nov/2026:19:01:02 +0000] "GET /k/7f3a9c HTTP/1.1" 404 1 "-" "-"` + "\n",
			stdout: `{"time":"2026-11-22T19:01:02Z","event":"step","ip":"203.0.113.9","sequence":"ssh","step":1,"file":"-","line":1}`},
		{name: "flag overrides file", args: []string{"replay", "-c", example, "--log-format", "common", exampleLog}, code: exitFail,
			stderr: `no line matches log.format "common"`, noStdout: true},
		{name: "check bad", args: []string{"check", "-c", "testdata/bad.yaml"}, code: exitFail,
			stderr: "testdata/bad.yaml:7: sequences[0].steps[1]: bad path \"k/b2\""},
		{name: "check trusted proxies without header", args: []string{"check", "-c", "testdata/trusted-no-xff.yaml"}, code: exitFail,
			stderr: "log.trusted_proxies: trusted_proxies is set but the format has no $http_x_forwarded_for"},
		{name: "check extra argument", args: []string{"check", "-c", example, "x"}, code: exitUsage, stderr: `unexpected argument "x"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.stdout) || !strings.Contains(errOut, tc.stderr) || (tc.noStdout && out != "") {
				t.Errorf("webknock %q = exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit %d, stdout with %q, stderr with %q",
					tc.args, code, out, errOut, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}

// TestReplayCorpus replays every public log with a configuration whose paths
// it does not contain and with one made of paths it does contain: no crash,
// no grant.
func TestReplayCorpus(t *testing.T) {
	var logs []string
	err := filepath.WalkDir("../../testdata/corpus", func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(path, ".md") && !strings.HasSuffix(path, ".tsv") && !strings.HasSuffix(path, ".golden") {
			logs = append(logs, path)
		}
		return err
	})
	if err != nil || len(logs) < 90 {
		t.Fatalf("corpus: %d files, %v", len(logs), err)
	}
	for _, cfg := range []string{"../../testdata/example.yaml", "testdata/corpus-paths.yaml"} {
		for _, format := range []string{"combined", "common", "vhost_combined"} {
			var parsed, refused int
			for _, log := range logs {
				out, errOut, code := runCmd(t, "", "replay", "--json", "--parse-all", "-c", cfg, "--log-format", format, log)
				switch {
				case code == exitFail && strings.Contains(errOut, "no line matches log.format"):
					// A log of another format is refused, never read as empty.
					refused++
					continue
				case code != 0:
					t.Fatalf("replay %s as %s: exit %d: %s", cfg, format, code, errOut)
				}
				if strings.Contains(out, `"grant"`) || !strings.Contains(errOut, ", 0 grants") {
					t.Errorf("replay %s of %s as %s granted:\n%s\n%s", cfg, log, format, out, errOut)
				}
				var read, examined, n int
				summary := errOut[strings.LastIndex(strings.TrimSpace(errOut), "\n")+1:]
				if _, err := fmt.Sscanf(summary, "replay: %d lines read, %d examined, %d parsed", &read, &examined, &n); err != nil {
					t.Fatalf("summary %q: %v", errOut, err)
				}
				parsed += n
			}
			if format == "combined" && parsed < 10000 {
				t.Errorf("replay as combined parsed only %d lines", parsed)
			}
			if refused == 0 || refused == len(logs) {
				t.Errorf("replay as %s refused %d of %d logs for their format", format, refused, len(logs))
			}
		}
	}
}

// TestFastPathEqualsParseAll replays a large random log, real lines mixed
// with knocks, near-knocks and hostile variants, both ways: the events must
// be identical.
func TestFastPathEqualsParseAll(t *testing.T) {
	corpus, err := os.ReadFile("../../testdata/corpus/elastic-apache_logs/apache_logs")
	if err != nil {
		t.Fatal(err)
	}
	real := strings.Split(strings.TrimSpace(string(corpus)), "\n")
	rng := rand.New(rand.NewPCG(7, 11))
	paths := []string{"/k/7f3a9c", "/k/91c2e0", "/k/00aa5d", "/k/open", "/k/q4Zb1x", "/k/Lm82aa", "/k/admin-open"}
	variants := []func(p string) string{
		func(p string) string { return p },
		func(p string) string { return p + "?r=1" },
		func(p string) string { return p + "/" },
		func(p string) string { return "/x" + p },
		func(p string) string { return strings.ToUpper(p) },
	}
	var b bytes.Buffer
	for i := 0; i < 60000; i++ {
		sec := i / 20
		ts := fmt.Sprintf("22/Nov/2026:%02d:%02d:%02d +0000", 10+sec/3600, sec/60%60, sec%60)
		if rng.IntN(4) > 0 {
			line := real[rng.IntN(len(real))]
			if j := strings.Index(line, "["); j > 0 && len(line) > j+28 {
				line = line[:j+1] + ts + line[j+27:]
			}
			b.WriteString(line)
		} else {
			ip := fmt.Sprintf("198.51.100.%d", rng.IntN(6)+1)
			method := []string{"GET", "GET", "HEAD", "POST"}[rng.IntN(4)]
			status := []int{404, 404, 404, 200, 499}[rng.IntN(5)]
			p := variants[rng.IntN(len(variants))](paths[rng.IntN(len(paths))])
			fmt.Fprintf(&b, `%s - - [%s] "%s %s HTTP/1.1" %d 0 "-" "ua %s"`, ip, ts, method, p, status, paths[rng.IntN(len(paths))])
		}
		b.WriteByte('\n')
	}
	replayBothWays(t, "../../testdata/example.yaml", b.Bytes(), 5)
}

// TestFastPathEqualsParseAllManySequences does the same with a thousand
// sequences of random paths made as webknock init makes them (4,000 paths to
// look for): whole knocks, partial and misordered ones, variants of the
// paths and real lines.
func TestFastPathEqualsParseAllManySequences(t *testing.T) {
	corpus, err := os.ReadFile("../../testdata/corpus/elastic-apache_logs/apache_logs")
	if err != nil {
		t.Fatal(err)
	}
	real := strings.Split(strings.TrimSpace(string(corpus)), "\n")
	rng := rand.New(rand.NewPCG(5, 8))
	seqs := make([][]string, 1000)
	raw := make([]byte, 12)
	var cfg strings.Builder
	// Every client is in one /24: its cap would deny most grants.
	cfg.WriteString("log:\n  paths: [/var/log/nginx/access.log]\n  format: combined\nstate_dir: /var/lib/webknock\nfirewall:\n  backend: dry-run\n  max_grants_per_ipv4_24: 65536\nsequences:\n")
	for i := range seqs {
		for range 4 {
			for j := range raw {
				raw[j] = byte(rng.Uint32())
			}
			seqs[i] = append(seqs[i], "/k/"+base64.RawURLEncoding.EncodeToString(raw))
		}
		fmt.Fprintf(&cfg, "  - name: s%04d\n    steps: [%s]\n    knock_page: %s\n    timeout: 30s\n    window: 10m\n    ports: [22/tcp]\n",
			i, strings.Join(seqs[i][:3], ", "), seqs[i][3])
	}
	cfg.WriteString("web:\n  listen: \"\"\n")
	cfgFile := filepath.Join(t.TempDir(), "many.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	variants := []func(p string) string{
		func(p string) string { return p + "?r=1" },
		func(p string) string { return p + "/" },
		func(p string) string { return "/x" + p },
		func(p string) string { return strings.ToUpper(p) },
		func(p string) string { return p[:len(p)-1] },
		func(p string) string { return p[:len(p)-1] + "~" },
		func(p string) string { return "/k/" },
	}
	var b bytes.Buffer
	for i := 0; i < 60000; i++ {
		sec := i / 20
		ts := fmt.Sprintf("22/Nov/2026:%02d:%02d:%02d +0000", 10+sec/3600, sec/60%60, sec%60)
		ip := fmt.Sprintf("198.51.100.%d", rng.IntN(200)+1)
		seq := seqs[rng.IntN(len(seqs))]
		var paths []string
		methods := []string{"GET", "GET", "GET", "HEAD", "POST"}
		switch r := rng.IntN(10); {
		case r < 6:
			line := real[rng.IntN(len(real))]
			if j := strings.Index(line, "["); j > 0 && len(line) > j+28 {
				line = line[:j+1] + ts + line[j+27:]
			}
			b.WriteString(line + "\n")
			continue
		case r < 8: // a whole knock
			paths, methods = seq, methods[:1]
		case r == 8: // some steps, in any order
			paths = append([]string(nil), seq[:rng.IntN(4)]...)
			rng.Shuffle(len(paths), func(i, j int) { paths[i], paths[j] = paths[j], paths[i] })
		default:
			paths = []string{variants[rng.IntN(len(variants))](seq[rng.IntN(4)])}
		}
		for _, p := range paths {
			method := methods[rng.IntN(len(methods))]
			fmt.Fprintf(&b, `%s - - [%s] "%s %s HTTP/1.1" 404 0 "-" "ua %s"`+"\n", ip, ts, method, p, seqs[rng.IntN(len(seqs))][0])
		}
	}
	replayBothWays(t, cfgFile, b.Bytes(), 5000)
}

// replayBothWays replays log with cfg on the fast path and parsing every
// line: the events must be identical, with at least minGrants grants.
func replayBothWays(t *testing.T, cfg string, data []byte, minGrants int) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "access.log")
	if err := os.WriteFile(log, data, 0o644); err != nil {
		t.Fatal(err)
	}
	fast, errFast, code1 := runCmd(t, "", "replay", "--json", "-c", cfg, log)
	all, errAll, code2 := runCmd(t, "", "replay", "--json", "--parse-all", "-c", cfg, log)
	if code1 != 0 || code2 != 0 {
		t.Fatalf("exit %d %d: %s %s", code1, code2, errFast, errAll)
	}
	if fast != all {
		t.Fatalf("the events differ:\nfast path: %d bytes\nparse-all: %d bytes", len(fast), len(all))
	}
	// `webknock run` filters each batch the follower hands over the same way.
	checkLiveEqualsParseAll(t, cfg, log, data)
	if n := strings.Count(fast, `"grant"`); n < minGrants {
		t.Fatalf("only %d grants: the log does not exercise the knock paths", n)
	}
	t.Logf("%d event bytes, %d grants; %s", len(fast), strings.Count(fast, `"grant"`), strings.TrimSpace(errFast))
}

// TestMainBinary builds the command and runs the README's first command.
func TestMainBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := webknockBinary(t)
	cmd := exec.Command(bin, "replay", "-c", "../../testdata/example.yaml", "../../testdata/example.log")
	out, err := cmd.Output()
	if err != nil || strings.Count(string(out), "grant") != 3 {
		t.Fatalf("webknock replay: %v\n%s", err, out)
	}
	if err := exec.Command(bin, "check", "-c", "testdata/bad.yaml").Run(); err == nil {
		t.Fatal("check of a bad file exited 0")
	} else if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFail {
		t.Fatalf("check of a bad file: %v, want exit %d", err, exitFail)
	}
}
