package main

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/webknock/webknock/knock"
)

const (
	kaKeyB64  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" // alice's and bob's key
	carolB64  = "7xdxRO7JQgy8EJPSqLNEqSvFBtDU7JwCjdGfgyTYweY=" // DeriveKey(kaPassphrase, 0..15)
	kaSaltB64 = "AAECAwQFBgcICQoLDA0ODw=="
)

// external matches what would make a browser fetch something when the page
// loads: any src, any href but the empty data: icon, CSS imports.
var external = regexp.MustCompile(`(?i)\bsrc\s*=|\bhref\s*=\s*["']?(?:[^d"']|d[^a])|@import`)

// inline returns the text of the page's only code script and style element.
func inline(t *testing.T, page string) (script, style string) {
	t.Helper()
	scripts := regexp.MustCompile(`(?s)<script>(.*?)</script>`).FindAllStringSubmatch(page, -1)
	styles := regexp.MustCompile(`(?s)<style>(.*?)</style>`).FindAllStringSubmatch(page, -1)
	if len(scripts) != 1 || len(styles) != 1 {
		t.Fatalf("%d scripts and %d styles, want 1 of each", len(scripts), len(styles))
	}
	return scripts[0][1], styles[0][1]
}

func TestHelper(t *testing.T) {
	dir, cfg := oneTimeFixture(t)
	tests := []struct {
		seq, flag string
		mode      os.FileMode
		has       []string // in the page
		hasNot    []string
		warning   string // in stderr
	}{
		{seq: "alice", mode: 0o600, has: []string{kaKeyB64, `"mode":"hmac"`, `"steps":2`, `"prefix":"/o/"`, `"period":60`, "±1m (skew 1)"},
			hasNot: []string{`"salt"`, `id="pass"`}, warning: "warning: " + filepath.Join(dir, "alice.html") + " holds the key of sequence alice"},
		{seq: "bob", mode: 0o600, has: []string{kaKeyB64, `"mode":"totp"`, `"paths":["/k/bob1","/k/bob2"]`, `"prefix":"/t/"`, `"period":30`, "±1m (skew 2)"},
			hasNot: []string{`"salt"`}, warning: "holds the key of sequence bob"},
		{seq: "carol", flag: "--passphrase", mode: 0o644,
			has:    []string{`"salt":"` + kaSaltB64 + `"`, `"iterations":600000`, `"check":"9eaf"`, `id="pass"`, `type="password"`, "the server's time step (skew 0)"},
			hasNot: []string{carolB64, `"key"`}, warning: "may be published"},
		{seq: "ssh", mode: 0o600, has: []string{`"mode":"static"`, `"paths":["/k/7f3a9c","/k/91c2e0","/k/open"]`},
			hasNot: []string{`"key"`, "Time step"}, warning: "holds the secret paths of sequence ssh"},
	}
	for _, tc := range tests {
		t.Run(tc.seq, func(t *testing.T) {
			file := filepath.Join(dir, tc.seq+".html")
			args := []string{"helper", "-c", cfg, "--sequence", tc.seq, "--base", "https://knock.example:8443", "-o", file}
			if tc.flag != "" {
				args = append(args, tc.flag)
			}
			out, errOut, code := runCmd(t, "", args...)
			if code != exitOK || out != "" || !strings.Contains(errOut, tc.warning) {
				t.Fatalf("webknock %q = exit %d, stdout %q, stderr %q; want exit 0 and %q", args, code, out, errOut, tc.warning)
			}
			fi, err := os.Stat(file)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != tc.mode {
				t.Errorf("page mode %v, want %v", fi.Mode().Perm(), tc.mode)
			}
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			page := string(b)
			if m := external.FindString(page); m != "" {
				t.Errorf("page refers to something outside it: %q", m)
			}
			script, style := inline(t, page)
			if strings.Contains(style, "url(") {
				t.Error("style loads something with url()")
			}
			csp := "default-src &#39;none&#39;; script-src &#39;" + cspHash(script) + "&#39;; style-src &#39;" + cspHash(style) +
				"&#39;; connect-src https://knock.example:8443;"
			if !strings.Contains(strings.ReplaceAll(page, "&#43;", "+"), csp) {
				t.Errorf("page has no Content-Security-Policy %q allowing only its own script and style and the base", csp)
			}
			for _, s := range append(tc.has, `"base":"https://knock.example:8443"`, `name="viewport"`) {
				if !strings.Contains(page, s) {
					t.Errorf("page lacks %q", s)
				}
			}
			for _, s := range tc.hasNot {
				if strings.Contains(page, s) {
					t.Errorf("page has %q", s)
				}
			}

			// Never overwritten.
			if _, _, code := runCmd(t, "", args...); code != exitFail {
				t.Errorf("helper over an existing page: exit %d, want %d", code, exitFail)
			}
			if again, _ := os.ReadFile(file); !bytes.Equal(again, b) {
				t.Error("page changed")
			}
		})
	}
}

func TestHelperErrors(t *testing.T) {
	dir, cfg := oneTimeFixture(t)
	out := filepath.Join(dir, "page.html")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"random key with passphrase", []string{"--sequence", "alice", "--passphrase"}, exitFail,
			"the key was not made from a passphrase; make one with init --one-time --passphrase"},
		{"static with passphrase", []string{"--sequence", "ssh", "--passphrase"}, exitFail, "--passphrase is for one-time sequences"},
		{"unknown sequence", []string{"--sequence", "dave"}, exitUsage, `unknown sequence "dave"`},
		{"no base", []string{"--sequence", "alice", "--base", ""}, exitUsage, "--base URL is required"},
		{"bad base", []string{"--sequence", "alice", "--base", "https://knock.example/x"}, exitUsage, "bad --base"},
		{"no output", []string{"--sequence", "alice", "-o", ""}, exitUsage, "-o FILE is required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"helper", "-c", cfg, "--base", "https://knock.example", "-o", out}, tc.args...)
			stdout, errOut, code := runCmd(t, "", args...)
			if code != tc.code || stdout != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("webknock %q = exit %d, stdout %q, stderr %q; want exit %d with %q", args, code, stdout, errOut, tc.code, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("webknock %q wrote a page", args)
			}
		})
	}
}

// TestHelperPageEscapes: values reach the script as data, never as code or
// markup, whatever they hold.
func TestHelperPageEscapes(t *testing.T) {
	evil := `a</script><script>alert(1)</script>"'&<!--`
	ks := knock.Sequence{Name: evil, Steps: []string{"/k/" + evil}, OneTime: &knock.OneTime{
		Mode: knock.ModeTOTP, Key: make([]byte, knock.KeyBytes), Prefix: "/t/" + evil, Period: knock.TOTPPeriod, Skew: 1,
	}}
	b, err := helperPage(ks, "https://knock.example", nil)
	if err != nil {
		t.Fatal(err)
	}
	page := string(b)
	if strings.Contains(page, "<script>alert") || strings.Count(page, "<script") != 2 || strings.Count(page, "</script>") != 2 {
		t.Errorf("a sequence name broke out of its place:\n%s", page)
	}
	data := regexp.MustCompile(`(?s)<script type="application/json" id="wk-data">(.*?)</script>`).FindStringSubmatch(page)
	if data == nil || !strings.Contains(data[1], `\u003c/script\u003e`) {
		t.Errorf("data block does not escape the name: %q", data)
	}
	if !strings.Contains(page, base64.StdEncoding.EncodeToString(ks.OneTime.Key)) {
		t.Error("page lacks the key")
	}
}
