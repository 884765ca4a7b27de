package main

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/webknock/webknock/knock"
)

// writeKey writes a new random one-time key file, private, and returns
// the key.
func writeKey(t *testing.T, path string) []byte {
	t.Helper()
	key := make([]byte, knock.KeyBytes)
	rand.Read(key)
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return key
}

// squidURLs returns the knock URLs squid logged (its native log format:
// "... METHOD URL ...").
func squidURLs(t *testing.T, log string) []string {
	t.Helper()
	raw, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, m := range regexp.MustCompile(`GET (http://\S+/k/\S+)`).FindAllStringSubmatch(string(raw), -1) {
		urls = append(urls, m[1])
	}
	return urls
}

// TestE2EOneTimeThroughProxy is the story of one-time URLs: headless
// Chromium behind squid, the corporate proxy, opens the helper page, which
// computes the current URLs and requests them; the port opens for squid's
// address. Whoever reads squid's log and requests the same URLs from
// another address, within the same minute, opens nothing, and webknock
// reports the reuse. A totp knock with the code an authenticator app
// would show opens the port.
func TestE2EOneTimeThroughProxy(t *testing.T) {
	e := newE2E(t, "nginx", "squid", "chromium")
	e.startNginxSnippet()
	e.startListener()
	writeKey(t, filepath.Join(e.dir, "alice.key"))
	bobKey := writeKey(t, filepath.Join(e.dir, "bob.key"))
	cfg := e.writeConfig(e2eConf{seqs: `  - name: alice
    one_time:
      key_file: ` + filepath.Join(e.dir, "alice.key") + `
      prefix: /k/
      steps: 2
    timeout: 30s
    window: 10m
    ports: [22/tcp]
  - name: bob
    steps: [/k/totp-b1, /k/totp-b2]
    one_time:
      key_file: ` + filepath.Join(e.dir, "bob.key") + `
      mode: totp
      prefix: /k/
    timeout: 1m
    window: 10m
    ports: [22/tcp]
`})
	d := e.startDaemon(cfg)
	proxy, reader, phone := cliV4[2], cliV4[3], cliV4[4]
	squidLog := e.startSquid(proxy)
	e.assertOpen()

	page := filepath.Join(e.dir, "alice.html")
	if out, err := e.in(e.srv, webknockBinary(t), "helper", "-c", cfg, "--sequence", "alice",
		"--base", "http://"+srvV4, "-o", page).CombinedOutput(); err != nil {
		t.Fatalf("webknock helper: %v\n%s", err, out)
	}
	dom := e.chromium(e.cli, "--proxy-server=http://127.0.0.1:3128", "--virtual-time-budget=30000",
		"--dump-dom", "file://"+page+"#knock")
	if !strings.Contains(dom, `data-state="done"`) {
		t.Errorf("the helper page did not finish its knock:\n%s", dom)
	}
	d.wait(t, "grant", proxy)
	e.assertOpen(proxy)

	// The proxy's admin replays every knock URL of its log from elsewhere.
	urls := squidURLs(t, squidLog)
	if len(urls) != 3 {
		t.Fatalf("squid logged %d knock URLs, want 3 (2 steps and the knock page): %q", len(urls), urls)
	}
	for _, u := range urls {
		if out, err := e.in(e.cli, "curl", "-s", "-o", "/dev/null", "--max-time", "5", "--interface", reader, u).CombinedOutput(); err != nil {
			t.Fatalf("curl %s from %s: %v\n%s", u, reader, err, out)
		}
	}
	r := d.wait(t, "one-time path reused: the URL leaked (a proxy's log, browser history, a link scanner); it opened nothing", reader)
	if r["level"] != "WARN" || r["sequence"] != "alice" {
		t.Errorf("reuse record %v", r)
	}
	e.assertOpen(proxy)

	// totp: the static steps, then the code of the current 30 s step.
	code := knock.Code(bobKey, knock.TimeStep(time.Now(), knock.TOTPPeriod))
	e.knock(phone, "/k/totp-b1", "/k/totp-b2", "/k/"+code)
	if g := d.wait(t, "grant", phone); g["sequence"] != "bob" {
		t.Errorf("grant %v, want one of bob", g)
	}
	e.assertOpen(proxy, phone)

	used, err := loadUsed(filepath.Join(e.dir, "state"))
	if err != nil || used["alice"].Client.String() != proxy || used["bob"].Client.String() != phone {
		t.Errorf("onetime.json = %+v, %v", used, err)
	}
}
