package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/webknock/webknock/internal/golden"
)

// testRoot is the repository, for tests that change directory.
var testRoot, _ = filepath.Abs("../..")

const (
	exampleConfig = "../../testdata/example.yaml"
	exampleLog    = "../../testdata/example.log"
	exampleExpect = "../../testdata/example.expect"
)

// TestReplayExpectExample is the CI job of the README: the shipped example
// replays to exactly its expected grants. -update rewrites the file.
func TestReplayExpectExample(t *testing.T) {
	if golden.Updating() {
		if _, errOut, code := runCmd(t, "", "replay", "-c", exampleConfig, "--expect", exampleExpect, "--update", exampleLog); code != 0 {
			t.Fatalf("replay --update: exit %d: %s", code, errOut)
		}
	}
	out, errOut, code := runCmd(t, "", "replay", "-c", exampleConfig, "--expect", exampleExpect, exampleLog)
	if code != 0 || !strings.HasPrefix(out, "PASS ") {
		t.Fatalf("replay --expect: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}

// expectFile writes lines as an expectation file and returns its path.
func expectFile(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "expect.jsonl")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	grantSSH   = `{"ip":"203.0.113.7","sequence":"ssh","until":"2026-11-22T19:11:30Z","ports":["22/tcp"]}`
	grantV6    = `{"ip":"2001:db8:42::17","sequence":"ssh","until":"2026-11-22T19:14:11Z"}`
	grantAdmin = `{"time":"2026-11-22T19:05:31Z","event":"grant","ip":"198.51.100.77","sequence":"admin","until":"2026-11-22T20:05:31Z","ports":["2222/tcp","8443/tcp"]}`
)

func TestReplayExpect(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		code  int
		want  []string // in stdout
	}{
		{"exactly the grants", []string{grantSSH, "", "# comment", grantV6, grantAdmin}, 0,
			[]string{"PASS ", "3 grants expected, 3 replayed: 3 matched"}},
		{"another zone for the same instant", []string{strings.Replace(grantSSH, "19:11:30Z", "20:11:30+01:00", 1), grantV6, grantAdmin}, 0,
			[]string{"PASS "}},
		{"a grant missing from the log", []string{grantSSH, grantV6, grantAdmin,
			`{"ip":"192.0.2.9","sequence":"ssh","until":"2026-11-22T19:00:00Z"}`}, 1,
			[]string{"missing     ", ".jsonl:4: {\"ip\":\"192.0.2.9\"", "FAIL ", "1 missing"}},
		{"a grant not expected", []string{grantSSH, grantAdmin}, 1,
			[]string{"unexpected  ../../testdata/example.log:21: ", "2001:db8:42::17", "1 unexpected"}},
		{"a different until", []string{strings.Replace(grantSSH, "19:11:30", "19:21:30", 1), grantV6, grantAdmin}, 1,
			[]string{"different   ../../testdata/example.log:9: 203.0.113.7 ssh: until 2026-11-22T19:11:30Z, expected 2026-11-22T19:21:30Z", "1 different"}},
		{"different ports", []string{strings.Replace(grantSSH, "22/tcp", "2222/tcp", 1), grantV6, grantAdmin}, 1,
			[]string{"ports 22/tcp, expected 2222/tcp"}},
		{"a different time", []string{grantSSH, grantV6, strings.Replace(grantAdmin, "19:05:31Z\",\"event", "19:05:30Z\",\"event", 1)}, 1,
			[]string{"time 2026-11-22T19:05:31Z, expected 2026-11-22T19:05:30Z"}},
		{"a widened grant expected", []string{grantSSH, strings.Replace(grantV6, `"until"`, `"source":"2001:db8:42::/64","until"`, 1), grantAdmin}, 1,
			[]string{"source (none), expected 2001:db8:42::/64"}},
		{"no grants expected", []string{"# none"}, 1, []string{"3 unexpected"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, "", "replay", "-c", exampleConfig, "--expect", expectFile(t, tt.lines...), exampleLog)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, `"event":"step"`) {
				t.Errorf("--expect printed events:\n%s", out)
			}
		})
	}
}

func TestReplayExpectFileErrors(t *testing.T) {
	tests := []struct {
		name, line, want string
	}{
		{"not JSON", `ip=192.0.2.1`, "want a grant as one JSON object"},
		{"a typo in a field", `{"ip":"192.0.2.1","sequence":"ssh","untill":"2026-11-22T19:00:00Z"}`, `unknown field "untill"`},
		{"another event", `{"event":"step","ip":"192.0.2.1","sequence":"ssh","until":"2026-11-22T19:00:00Z"}`, `event "step": an expectation lists grants only`},
		{"bad address", `{"ip":"example.org","sequence":"ssh","until":"2026-11-22T19:00:00Z"}`, `ip "example.org": want an IP address`},
		{"no until", `{"ip":"192.0.2.1","sequence":"ssh"}`, `until "": want an RFC 3339 time`},
		{"no sequence", `{"ip":"192.0.2.1","until":"2026-11-22T19:00:00Z"}`, `sequence: required`},
		{"two values", `{"ip":"192.0.2.1","sequence":"ssh","until":"2026-11-22T19:00:00Z"} {}`, "more than one JSON value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := expectFile(t, grantSSH, tt.line)
			_, errOut, code := runCmd(t, "", "replay", "-c", exampleConfig, "--expect", p, exampleLog)
			if code != exitFail || !strings.Contains(errOut, p+":2: ") || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and %q at %s:2", code, errOut, tt.want, p)
			}
		})
	}
	if _, errOut, code := runCmd(t, "", "replay", "-c", exampleConfig, "--update", exampleLog); code != exitUsage || !strings.Contains(errOut, "--update rewrites the file of --expect") {
		t.Errorf("--update without --expect: exit %d, %s", code, errOut)
	}
}

// TestReplayWrongFormat: a log none of whose lines match log.format fails
// the replay, also when no line holds a knock path, naming the file, the
// format and a line.
func TestReplayWrongFormat(t *testing.T) {
	nginxMain := `192.0.2.1 - - [22/Nov/2026:19:00:00 +0000] "GET /index.html HTTP/1.1" 200 612 "-" "curl/8.5.0" "-"` + "\n"
	for _, tt := range []struct {
		name, log, format string
		code              int
		want              string
	}{
		{"vhost_combined read as combined", "www.example.org:443 " + nginxMain, "combined", exitFail,
			`replay -: no line matches log.format "combined"`},
		{"json read as combined", `{"remote_addr":"192.0.2.1","request":"GET /k/open HTTP/1.1"}` + "\n", "combined", exitFail,
			`line 1: "{\"remote_addr\"`},
		{"a custom format that matches", nginxMain,
			`$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" "$http_x_forwarded_for"`, 0, "1 lines read"},
		{"nginx's main format read as combined", nginxMain, "combined", exitFail, "no line matches"},
		{"only loopback clients still match", strings.Replace(strings.TrimSuffix(nginxMain, " \"-\"\n")+"\n", "192.0.2.1", "127.0.0.1", 1), "combined", 0, "1 lines read, 0 examined"},
		{"an empty log", "", "combined", 0, "0 lines read"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := runCmd(t, tt.log, "replay", "-c", exampleConfig, "--log-format", tt.format, "-")
			if code != tt.code || !strings.Contains(errOut, tt.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit %d and %q", code, errOut, tt.code, tt.want)
			}
		})
	}
}

func TestReplayPrintSkippedAndSummaryJSON(t *testing.T) {
	log := "203.0.113.7 - - [22/Nov/2026:19:00:00 +0000] \"GET /k/7f3a9c HTTP/1.1\" 404 153 \"-\" \"-\"\n" +
		"garbage\n" +
		"127.0.0.1 - - [22/Nov/2026:19:00:01 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"\n"
	out, errOut, code := runCmd(t, log, "replay", "-c", exampleConfig, "--json", "--print-skipped", "--summary", "json", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, `"file":"-","line":1}`) {
		t.Errorf("events lack file and line:\n%s", out)
	}
	for _, w := range []string{
		"-:2: skipped: format: line does not match the log format: \"garbage\"\n",
		"-:3: skipped: loopback: ",
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}
	last := errOut[strings.LastIndex(strings.TrimSuffix(errOut, "\n"), "\n")+1:]
	var s jsonSummary
	if err := json.Unmarshal([]byte(last), &s); err != nil {
		t.Fatalf("summary %q: %v", last, err)
	}
	if s.Lines != 3 || s.Parsed != 1 || s.Skipped["format"] != 1 || s.Skipped["loopback"] != 1 || s.Events["step"] != 1 ||
		len(s.Files) != 1 || s.Files[0].Name != "-" || s.Expect != nil {
		t.Errorf("summary = %+v", s)
	}
}

func TestReplayNeedsNoLogPaths(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "replay.yaml")
	b, err := os.ReadFile(exampleConfig)
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(string(b), "paths: [/var/log/nginx/access.log]", "paths: []", 1)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := runCmd(t, "", "replay", "-c", cfg, "--expect", exampleExpect, exampleLog); code != 0 {
		t.Errorf("replay with log.paths: []: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runCmd(t, "", "check", "-c", cfg); code == 0 || !strings.Contains(errOut, "log.paths") {
		t.Errorf("check with log.paths: []: exit %d: %s", code, errOut)
	}
}

func FuzzParseExpect(f *testing.F) {
	for _, s := range []string{grantSSH, grantV6, grantAdmin, "# c\n\n" + grantSSH, `{"ip":"x"}`, "{", `{"time_step":5}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		gs, err := parseExpect("f", strings.NewReader(string(b)))
		if err != nil {
			return
		}
		// What parses compares with itself.
		got := make([]jsonEvent, len(gs))
		for i, g := range gs {
			got[i] = g.jsonEvent
		}
		if d := diffGrants(gs, got); !d.pass() {
			t.Errorf("expectations differ from themselves: %+v", d)
		}
	})
}

// TestCIJobExample runs the replay step of config/examples/ci-replay.yml
// (the README's CI job) as written, on the shipped example: it passes on
// the right expectation, and fails on a wrong one and on a wrong format.
func TestCIJobExample(t *testing.T) {
	job, err := os.ReadFile("../../config/examples/ci-replay.yml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	body := string(job[strings.Index(string(job), "name: webknock"):])
	if !strings.Contains(string(readme), "```yaml\n"+body+"```") {
		t.Error("the README's CI job differs from config/examples/ci-replay.yml")
	}
	var args []string
	for _, l := range strings.Split(body, "\n") {
		if cmd, ok := strings.CutPrefix(strings.TrimSpace(l), "- run: webknock replay "); ok {
			args = append([]string{"replay"}, strings.Fields(cmd)...)
		}
	}
	if args == nil {
		t.Fatal("no webknock replay step in the CI job")
	}
	copyTo := func(dst, src string, edit func(string) string) {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(edit(string(b))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	same := func(s string) string { return s }
	for _, tt := range []struct {
		name           string
		config, expect func(string) string
		code           int
		want           string
	}{
		{"right", same, same, 0, "PASS "},
		{"wrong expectation", same, func(s string) string { return strings.Replace(s, "19:11:30Z", "19:21:30Z", 1) }, exitFail, "FAIL "},
		{"wrong format", func(s string) string { return strings.Replace(s, "format: combined", "format: vhost_combined", 1) }, same, exitFail, "no line matches log.format"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Chdir(t.TempDir())
			if err := os.Mkdir("webknock", 0o755); err != nil {
				t.Fatal(err)
			}
			copyTo("webknock/webknock.yaml", filepath.Join(testRoot, "testdata/example.yaml"), tt.config)
			copyTo("webknock/access.log", filepath.Join(testRoot, "testdata/example.log"), same)
			copyTo("webknock/expected.jsonl", filepath.Join(testRoot, "testdata/example.expect"), tt.expect)
			out, errOut, code := runCmd(t, "", args...)
			if code != tt.code || !strings.Contains(out+errOut, tt.want) {
				t.Errorf("webknock %q: exit %d, want %d and %q\nstdout:\n%s\nstderr:\n%s", args, code, tt.code, tt.want, out, errOut)
			}
		})
	}
}

// TestReplayHoldsGrantPrefixToRun: replay refuses a grant_prefix that run
// would refuse, rather than replay grants run could never make.
func TestReplayHoldsGrantPrefixToRun(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "wide.yaml")
	conf := "sequences:\n  - name: ssh\n    steps: [/k/a1]\n    knock_page: /k/open\n    grant_prefix: {ipv4: 8}\n"
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCmd(t, "", "replay", "-c", cfg, "-")
	if code != exitFail || !strings.Contains(errOut, "wide.yaml:5: sequences[0].grant_prefix.ipv4: bad prefix length 8") {
		t.Errorf("replay of a /8 grant_prefix: exit %d, %s", code, errOut)
	}
}
