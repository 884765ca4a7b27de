package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/web"
	"github.com/webknock/webknock/weblog"

	"github.com/webknock/webknock/internal/realtest"
)

// initCmd runs `webknock init ARGS` with the flag set main builds for a
// command with flags.
func initCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	env := &environment{stdin: strings.NewReader(""), stdout: &o, stderr: &e}
	fs := pflag.NewFlagSet("webknock init", pflag.ContinueOnError)
	fs.SetOutput(&e)
	fs.StringP("config", "c", "", "configuration `FILE` (YAML)")
	initFlags(fs)
	config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o.String(), e.String(), err
	}
	err = runInit(context.Background(), env, fs, fs.Args())
	return o.String(), e.String(), err
}

// loadInitOutput loads init's output appended to a minimal configuration,
// as an admin would.
func loadInitOutput(t *testing.T, out string) *config.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "webknock.yaml")
	text := "log:\n  paths: [/var/log/nginx/access.log]\nfirewall:\n  backend: dry-run\nweb:\n  listen: \"\"\n" + out
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Options{Path: path, CheckFormat: weblog.CheckFormat})
	if err != nil {
		t.Fatalf("config.Load of init's output: %v\n%s", err, text)
	}
	return cfg
}

func TestInitOutputLoads(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		seq       string
		steps     int
		prefix    string
		chars     int // random characters per path
		wantPorts string
	}{
		{name: "defaults", args: nil, seq: "ssh", steps: 3, prefix: "/k/", chars: 16, wantPorts: "[22/tcp]"},
		{name: "all flags", args: []string{"--name", "admin_2", "--steps", "5", "--prefix", "/.well-known/x~y/", "--ports", "2222,53/udp,8443/tcp", "--bytes", "32"},
			seq: "admin_2", steps: 5, prefix: "/.well-known/x~y/", chars: 43, wantPorts: "[2222/tcp 53/udp 8443/tcp]"},
		{name: "prefix without slash", args: []string{"--prefix", "/knock", "--steps", "1", "--bytes", "8"}, seq: "ssh", steps: 1, prefix: "/knock/", chars: 11, wantPorts: "[22/tcp]"},
		{name: "longest", args: []string{"--bytes", "96", "--steps", "32"}, seq: "ssh", steps: 32, prefix: "/k/", chars: 128, wantPorts: "[22/tcp]"},
	}
	alphabet := regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := initCmd(t, tc.args...)
			if err != nil {
				t.Fatalf("init %q: %v\n%s", tc.args, err, errOut)
			}
			cfg := loadInitOutput(t, out)
			if len(cfg.Sequences) != 1 {
				t.Fatalf("init %q: %d sequences, want 1", tc.args, len(cfg.Sequences))
			}
			s := cfg.Sequences[0]
			if s.Name != tc.seq || len(s.Steps) != tc.steps || fmt.Sprint(s.Ports) != tc.wantPorts {
				t.Errorf("init %q = name %q, %d steps, ports %v; want %q, %d, %s", tc.args, s.Name, len(s.Steps), s.Ports, tc.seq, tc.steps, tc.wantPorts)
			}
			for _, p := range append(s.Steps, s.KnockPage) {
				rest, ok := strings.CutPrefix(p, tc.prefix)
				if !ok || len(rest) != tc.chars || !alphabet.MatchString(rest) {
					t.Errorf("init %q: path %q, want %s followed by %d characters of A-Z a-z 0-9 _ -", tc.args, p, tc.prefix, tc.chars)
				}
			}
		})
	}
}

// TestInitPathsUnique draws many paths: none repeats, and every character
// position takes many values (the bytes are random, not a counter).
func TestInitPathsUnique(t *testing.T) {
	const n = 5000
	paths := randomKnockPaths("/k/", n, 12)
	seen := map[string]bool{}
	first := map[byte]bool{}
	for _, p := range paths {
		if seen[p] {
			t.Fatalf("path %q drawn twice", p)
		}
		seen[p] = true
		first[p[3]] = true
	}
	if len(paths) != n || len(first) < 60 {
		t.Errorf("%d paths, %d distinct first characters; want %d and nearly all 64", len(paths), len(first), n)
	}
	// Across separate runs as well.
	a, _, errA := initCmd(t, "--steps", "32")
	b, _, errB := initCmd(t, "--steps", "32")
	if errA != nil || errB != nil || a == b {
		t.Errorf("two runs of init: %v, %v, same output %v", errA, errB, a == b)
	}
}

func TestInitToken(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	out, errOut, err := initCmd(t, "--token", file)
	if err != nil {
		t.Fatalf("init --token: %v\n%s", err, errOut)
	}
	loadInitOutput(t, out) // stdout stays the sequences block only
	if !strings.Contains(errOut, file) {
		t.Errorf("init --token: stderr %q does not name %s", errOut, file)
	}
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimSuffix(string(b), "\n"))
	if err != nil || len(raw) != 32 {
		t.Errorf("token %q: %d bytes decoded, %v; want 32 bytes of unpadded base64url", b, len(raw), err)
	}
	if tok, err := web.ReadToken(file); err != nil || tok+"\n" != string(b) {
		t.Errorf("web.ReadToken = %q, %v; want the token", tok, err)
	}

	// Never overwritten: not a file, not a symbolic link to a new one.
	link := filepath.Join(dir, "link")
	if err := os.Symlink(filepath.Join(dir, "target"), link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{file, link} {
		out, _, err := initCmd(t, "--token", path)
		if err == nil || errors.Is(err, errUsage) || out != "" {
			t.Errorf("init --token %s over an existing file = %v, stdout %q; want an error and no output", path, err, out)
		}
	}
	if again, _ := os.ReadFile(file); !bytes.Equal(again, b) {
		t.Errorf("token file changed from %q to %q", b, again)
	}
	if _, err := os.Lstat(filepath.Join(dir, "target")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("init --token followed a symbolic link: %v", err)
	}
}

func TestInitBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"bad name", []string{"--name", "my seq"}, `bad --name "my seq"`},
		{"long name", []string{"--name", strings.Repeat("a", 33)}, "bad --name"},
		{"no steps", []string{"--steps", "0"}, "bad --steps 0"},
		{"too many steps", []string{"--steps", "33"}, "bad --steps 33"},
		{"weak paths", []string{"--bytes", "4"}, "bad --bytes 4"},
		{"relative prefix", []string{"--prefix", "k/"}, `bad --prefix "k/"`},
		{"reserved character", []string{"--prefix", "/k%20/"}, `character "%" not allowed`},
		{"overlong paths", []string{"--prefix", "/" + strings.Repeat("k", 120) + "/", "--bytes", "96"}, "at most 200 allowed"},
		{"bad port", []string{"--ports", "22/sctp"}, `bad port "22/sctp"`},
		{"port zero", []string{"--ports", "0"}, `bad port "0"`},
		{"port twice", []string{"--ports", "22,22/tcp"}, `port "22/tcp" listed twice`},
		{"argument", []string{"extra"}, `unexpected argument "extra"`},
		{"config flag", []string{"-c", "x.yaml"}, "--config: init reads no configuration"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := initCmd(t, tc.args...)
			if !errors.Is(err, errUsage) || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("init %q = %v, stdout %q, stderr %q; want a usage error with %q", tc.args, err, out, errOut, tc.want)
			}
		})
	}
}

// TestInitExampleConfig: the shipped example refuses to load only because of
// its placeholder paths, and loads once init's paths replace them.
func TestInitExampleConfig(t *testing.T) {
	const example = "../../config/examples/webknock.yaml"
	_, err := config.Load(config.Options{Path: example, CheckFormat: weblog.CheckFormat})
	var errs config.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("config.Load(%s) = %v, want the placeholders refused", example, err)
	}
	var fields []string
	for _, e := range errs {
		fields = append(fields, e.Field)
	}
	if got, want := strings.Join(fields, " "), "sequences[0].steps[0] sequences[0].steps[1] sequences[0].steps[2] sequences[0].knock_page"; got != want {
		t.Errorf("config.Load(%s) refused %s, want only the placeholders %s\n%v", example, got, want, err)
	}

	text, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	placeholder := regexp.MustCompile(`"/k/<[^">]*>"`)
	paths := randomKnockPaths("/k/", 4, 12)
	n := 0
	filled := placeholder.ReplaceAllStringFunc(string(text), func(string) string { n++; return paths[n-1] })
	path := filepath.Join(t.TempDir(), "webknock.yaml")
	if err := os.WriteFile(path, []byte(filled), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(config.Options{Path: path, CheckFormat: weblog.CheckFormat})
	if err != nil {
		t.Fatalf("example with real paths: %v", err)
	}
	if s := cfg.Sequences[0]; len(s.Steps) != 3 || s.KnockPage != paths[3] {
		t.Errorf("example: steps %v, knock page %q", s.Steps, s.KnockPage)
	}
}

// TestExampleSnippets serves knocks through real nginx and Apache with the
// shipped snippets included: the knock paths answer 404 with
// Cache-Control: no-store, even where the site has its own 404 page, and the
// access log has lines webknock reads into a grant. Only 127.0.0.1 is used.
func TestExampleSnippets(t *testing.T) {
	realtest.Require(t, "snippet test", "nginx", "apache2")
	for _, m := range []string{"mod_headers.so", "mod_alias.so", "mod_remoteip.so"} {
		if _, err := os.Stat(filepath.Join(apacheModules, m)); err != nil {
			t.Fatalf("apache2 is installed but lacks %s: %v", m, err)
		}
	}
	for _, server := range []string{"nginx", "apache2"} {
		t.Run(server, func(t *testing.T) {
			s := startSnippetServer(t, server)

			// A fresh sequence under the snippet's prefix, knocked in full.
			out, _, err := initCmd(t, "--steps", "3")
			if err != nil {
				t.Fatal(err)
			}
			seq := loadInitOutput(t, out).Sequences[0]
			for i, p := range append(seq.Steps, seq.KnockPage) {
				method := http.MethodGet
				if i == 1 {
					method = http.MethodHead
				}
				s.knock(method, p+"?r=1")
			}
			// A path outside the prefix gets the site's own 404 page:
			// the snippet's body above did not come from it by chance.
			if body := s.get("/elsewhere"); !strings.Contains(body, "site 404 page") {
				t.Errorf("%s: GET /elsewhere = %q, want the site's 404 page", server, body)
			}

			lines := s.waitLog(seq.KnockPage)
			for _, p := range append(seq.Steps, seq.KnockPage) {
				if !strings.Contains(lines, " "+p+"?r=1 HTTP/1.1\" 404 ") {
					t.Errorf("%s: access log lacks a 404 line for %s:\n%s", server, p, lines)
				}
			}
			cfg := filepath.Join(s.dir, "webknock.yaml")
			text := fmt.Sprintf("log:\n  paths: [%q]\nstate_dir: %q\nfirewall:\n  backend: dry-run\nweb:\n  listen: \"\"\n%s", s.log, s.dir, out)
			if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
			events, errOut, code := runCmd(t, "", "replay", "--json", "-c", cfg, s.log)
			if code != 0 || !strings.Contains(events, `"event":"grant","ip":"203.0.113.7","sequence":"ssh"`) {
				t.Errorf("%s: replay of the access log = exit %d, events:\n%s%s\nwant a grant for 203.0.113.7\nlog:\n%s", server, code, events, errOut, lines)
			}
		})
	}
}

const apacheModules = "/usr/lib/apache2/modules"

// snippetServer is nginx or Apache on 127.0.0.1 with a snippet included.
type snippetServer struct {
	t    *testing.T
	name string
	dir  string
	log  string
	base string // http://127.0.0.1:PORT
}

func startSnippetServer(t *testing.T, name string) *snippetServer {
	t.Helper()
	dir := t.TempDir()
	// Apache's workers run as www-data and must reach the document root.
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	www := filepath.Join(dir, "www")
	if err := os.Mkdir(www, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "404.html"), []byte("site 404 page\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &snippetServer{t: t, name: name, dir: dir, log: filepath.Join(dir, "access.log")}
	port := freePort(t)
	s.base = fmt.Sprintf("http://127.0.0.1:%d", port)

	// The client address is taken from X-Real-IP (127.0.0.1 is trusted), so
	// the log shows a routable address that webknock accepts as a client.
	var cmd *exec.Cmd
	switch name {
	case "nginx":
		snippet, _ := filepath.Abs("../../config/examples/nginx-webknock.conf")
		conf := filepath.Join(dir, "nginx.conf")
		writeTestFile(t, conf, fmt.Sprintf(`worker_processes 1;
daemon off;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 32; }
http {
  access_log %[2]s combined;
  client_body_temp_path %[1]s/client_body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  set_real_ip_from 127.0.0.1;
  real_ip_header X-Real-IP;
  server {
    listen 127.0.0.1:%[3]d;
    root %[1]s/www;
    error_page 404 /404.html;
    include %[4]s;
  }
}
`, dir, s.log, port, snippet))
		if out, err := exec.Command("nginx", "-t", "-c", conf).CombinedOutput(); err != nil {
			t.Fatalf("nginx -t: %v\n%s", err, out)
		}
		cmd = exec.Command("nginx", "-c", conf)
	case "apache2":
		snippet, _ := filepath.Abs("../../config/examples/apache-webknock.conf")
		conf := filepath.Join(dir, "apache2.conf")
		writeTestFile(t, conf, fmt.Sprintf(`ServerRoot /etc/apache2
ServerName webknock-snippet-test
LoadModule mpm_event_module %[5]s/mod_mpm_event.so
LoadModule authz_core_module %[5]s/mod_authz_core.so
LoadModule alias_module %[5]s/mod_alias.so
LoadModule headers_module %[5]s/mod_headers.so
LoadModule remoteip_module %[5]s/mod_remoteip.so
User www-data
Group www-data
PidFile %[1]s/apache2.pid
DefaultRuntimeDir %[1]s
Mutex file:%[1]s default
ErrorLog %[1]s/error.log
Listen 127.0.0.1:%[3]d
DocumentRoot %[1]s/www
<Directory %[1]s/www>
  Require all granted
</Directory>
ErrorDocument 404 /404.html
RemoteIPHeader X-Real-IP
RemoteIPInternalProxy 127.0.0.1
LogFormat "%%a %%l %%u %%t \"%%r\" %%>s %%O \"%%{Referer}i\" \"%%{User-Agent}i\"" combined
CustomLog %[2]s combined
Include %[4]s
`, dir, s.log, port, snippet, apacheModules))
		env := append(os.Environ(), "APACHE_RUN_DIR="+dir, "APACHE_LOG_DIR="+dir)
		check := exec.Command("apache2", "-t", "-f", conf)
		check.Env = env
		if out, err := check.CombinedOutput(); err != nil {
			t.Fatalf("apache2 -t: %v\n%s", err, out)
		}
		cmd = exec.Command("apache2", "-f", conf, "-DFOREGROUND")
		cmd.Env = env
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop within 10s of SIGTERM", name)
		}
	})
	s.waitUp(done, &out)
	return s
}

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func writeTestFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitUp waits until the server answers, or fails if it exits first.
func (s *snippetServer) waitUp(done <-chan error, out *bytes.Buffer) {
	s.t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := http.Get(s.base + "/")
		if err == nil {
			resp.Body.Close()
			return
		}
		select {
		case err := <-done:
			errLog, _ := os.ReadFile(filepath.Join(s.dir, "error.log"))
			s.t.Fatalf("%s exited: %v\n%s%s", s.name, err, out, errLog)
		case <-deadline:
			s.t.Fatalf("%s did not answer on %s within 10s", s.name, s.base)
		case <-tick.C:
		}
	}
}

func (s *snippetServer) request(method, path string) *http.Response {
	s.t.Helper()
	req, err := http.NewRequestWithContext(s.t.Context(), method, s.base+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("X-Real-IP", "203.0.113.7")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

// knock requests a knock path: 404, never cacheable, and not the site's 404 page.
func (s *snippetServer) knock(method, path string) {
	s.t.Helper()
	resp := s.request(method, path)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cc, pragma := resp.Header.Get("Cache-Control"), resp.Header.Get("Pragma")
	if resp.StatusCode != http.StatusNotFound || cc != "no-store" || pragma != "no-cache" || strings.Contains(string(body), "site 404 page") {
		s.t.Errorf("%s: %s %s = %d, Cache-Control %q, Pragma %q, body %q; want 404, no-store, no-cache and the snippet's body",
			s.name, method, path, resp.StatusCode, cc, pragma, body)
	}
}

func (s *snippetServer) get(path string) string {
	s.t.Helper()
	resp := s.request(http.MethodGet, path)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// waitLog returns the access log once it has a line with want: a server
// writes it after answering.
func (s *snippetServer) waitLog(want string) string {
	s.t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(s.log)
		if strings.Contains(string(b), want) {
			return string(b)
		}
		select {
		case <-deadline:
			s.t.Fatalf("%s: access log has no line with %s within 10s:\n%s", s.name, want, b)
		case <-tick.C:
		}
	}
}
