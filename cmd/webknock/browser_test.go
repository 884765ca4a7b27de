package main

// Browser tests: the pages of `webknock helper` run in real headless
// Chromium. They compute the same URLs as `webknock url` and the
// known-answer vectors, and knock on a server on 127.0.0.1. Chromium
// resolves no name but knock.test (to 127.0.0.1), so no traffic leaves
// loopback.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/webknock/webknock/internal/realtest"
)

// kaUnix is kaAt in Unix seconds, for the page's #at=.
const kaUnix = 1740000000

// newBrowser starts headless Chromium for t and returns its first tab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	realtest.Require(t, "browser test", "chromium")
	path, _ := exec.LookPath("chromium")
	// chromedp makes the user data directory under TMPDIR, and removes it
	// after killing any Chromium process left using it.
	t.Setenv("TMPDIR", t.TempDir())
	alloc, cancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("host-resolver-rules", "MAP knock.test 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
	)
	t.Cleanup(cancel)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil { // starts the browser, without a deadline
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// pageResult is what a helper page shows.
type pageResult struct {
	State  string   `json:"state"`
	Status string   `json:"status"`
	Step   string   `json:"step"`
	URLs   []string `json:"urls"`
}

// openPage opens pageURL in a new tab, types pass if not empty and presses
// Knock if asked, and waits until the page shows a result.
func openPage(t *testing.T, browser context.Context, pageURL, pass string, press bool) pageResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(browser, time.Minute)
	defer cancel()
	ctx, cancel = chromedp.NewContext(ctx)
	defer cancel()
	steps := []chromedp.Action[chromedp.Void]{chromedp.Navigate(pageURL)}
	if pass != "" {
		steps = append(steps, chromedp.SendKeys(chromedp.ID("pass"), pass))
	}
	if press {
		steps = append(steps, chromedp.Click(chromedp.ID("go")))
	}
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", pageURL, err)
	}
	r, err := chromedp.Run(ctx, chromedp.Poll[pageResult](`(() => {
		const s = document.getElementById("status");
		if (!["dry", "done", "failed"].includes(s.dataset.state)) return null;
		const step = document.getElementById("step");
		return {state: s.dataset.state, status: s.textContent, step: step ? step.textContent : "",
			urls: Array.from(document.querySelectorAll("#urls li"), (li) => li.textContent)};
	})()`, chromedp.WithPollingTimeout(45*time.Second)))
	if err != nil {
		t.Fatalf("%s: no result: %v", pageURL, err)
	}
	return r
}

// writePage runs `webknock helper` for seq and returns the page's path.
func writePage(t *testing.T, cfg, seq, base string, flags ...string) string {
	t.Helper()
	page := filepath.Join(t.TempDir(), seq+".html")
	args := append([]string{"helper", "-c", cfg, "--sequence", seq, "--base", base, "-o", page}, flags...)
	if _, errOut, code := runCmd(t, "", args...); code != exitOK {
		t.Fatalf("webknock %q = exit %d: %s", args, code, errOut)
	}
	return page
}

func fileURL(path, fragment string) string {
	return (&url.URL{Scheme: "file", Path: path, Fragment: fragment}).String()
}

// TestHelperPageComputes opens each kind of page from a file at the time
// of the known-answer vectors, in dry mode: the page shows the URLs of
// `webknock url` for that time, which are those of the vectors.
func TestHelperPageComputes(t *testing.T) {
	browser := newBrowser(t)
	_, cfg := oneTimeFixture(t)
	const base = "https://knock.test:8443"
	for _, tc := range []struct {
		seq, pass string
		step      string
	}{
		{seq: "alice", step: "29000000"},
		{seq: "bob", step: "58000000"},
		{seq: "carol", pass: kaPassphrase, step: "29000000"},
		{seq: "ssh"},
	} {
		t.Run(tc.seq, func(t *testing.T) {
			var flags []string
			if tc.pass != "" {
				flags = append(flags, "--passphrase")
			}
			page := writePage(t, cfg, tc.seq, base, flags...)
			want, errOut, code := runCmd(t, "", "url", "-c", cfg, "--sequence", tc.seq, "--at", kaAt, "--base", base)
			if code != exitOK {
				t.Fatalf("webknock url: exit %d: %s", code, errOut)
			}
			var ka []string
			for _, p := range kaPaths[tc.seq] {
				ka = append(ka, base+p)
			}
			if got := strings.Fields(want); !slices.Equal(got, ka) {
				t.Fatalf("webknock url = %q, want the known answers %q", got, ka)
			}

			r := openPage(t, browser, fileURL(page, fmt.Sprintf("at=%d&dry", kaUnix)), tc.pass, tc.pass != "")
			if r.State != "dry" || !slices.Equal(r.URLs, ka) || r.Step != tc.step && tc.step != "" {
				t.Errorf("page at %d shows %s %q, T %q, URLs %q; want dry, T %s, URLs %q", kaUnix, r.State, r.Status, r.Step, r.URLs, tc.step, ka)
			}
		})
	}

	t.Run("wrong passphrase", func(t *testing.T) {
		page := writePage(t, cfg, "carol", base, "--passphrase")
		r := openPage(t, browser, fileURL(page, "dry"), "correct horse battery stapler", true)
		if r.State != "failed" || !strings.Contains(r.Status, "wrong passphrase") || len(r.URLs) != 0 {
			t.Errorf("page with a wrong passphrase shows %s %q, URLs %q; want failed, wrong passphrase, no URLs", r.State, r.Status, r.URLs)
		}
	})
}

// knockServer records the requests it gets, answering 404 as a knock
// path's server does.
type knockServer struct {
	mu   sync.Mutex
	reqs []string // method, path, cookie and referer
	url  string
}

func startKnockServer(t *testing.T, page []byte) *knockServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &knockServer{url: "http://" + ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/page.html" {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Write(page)
			return
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, fmt.Sprintf("%s %s cookie=%q referer=%q", r.Method, r.URL.RequestURI(), r.Header.Get("Cookie"), r.Header.Get("Referer")))
		s.mu.Unlock()
		w.Header().Set("Cache-Control", "no-store")
		http.NotFound(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *knockServer) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// TestHelperPageKnocks presses Knock on a page opened from a file: the
// server sees the sequence's paths, in order, once each, without cookies
// or referer. A page served over plain http (not loopback) refuses to
// compute and says why.
func TestHelperPageKnocks(t *testing.T) {
	browser := newBrowser(t)
	_, cfg := oneTimeFixture(t)
	srv := startKnockServer(t, nil)

	page := writePage(t, cfg, "alice", srv.url)
	r := openPage(t, browser, fileURL(page, fmt.Sprintf("at=%d", kaUnix)), "", true)
	var want []string
	for _, p := range kaPaths["alice"] {
		want = append(want, fmt.Sprintf("GET %s cookie=\"\" referer=\"\"", p))
	}
	if got := srv.requests(); r.State != "done" || !slices.Equal(got, want) {
		t.Errorf("page shows %s %q; server got %q, want %q", r.State, r.Status, got, want)
	}

	t.Run("#knock knocks on opening", func(t *testing.T) {
		srv := startKnockServer(t, nil)
		page := writePage(t, cfg, "alice", srv.url)
		r := openPage(t, browser, fileURL(page, fmt.Sprintf("at=%d&knock", kaUnix)), "", false)
		if got := srv.requests(); r.State != "done" || !slices.Equal(got, want) {
			t.Errorf("page opened with #knock shows %s %q; server got %q, want %q", r.State, r.Status, got, want)
		}
	})

	t.Run("plain http", func(t *testing.T) {
		page, err := os.ReadFile(writePage(t, cfg, "alice", "https://knock.test"))
		if err != nil {
			t.Fatal(err)
		}
		srv := startKnockServer(t, page)
		_, port, _ := strings.Cut(strings.TrimPrefix(srv.url, "http://"), ":")
		r := openPage(t, browser, "http://knock.test:"+port+"/page.html#dry", "", false)
		if r.State != "failed" || !strings.Contains(r.Status, "opened from a file or over https") || len(srv.requests()) != 0 {
			t.Errorf("page over plain http shows %s %q, server got %q; want failed, saying why", r.State, r.Status, srv.requests())
		}
	})
}
