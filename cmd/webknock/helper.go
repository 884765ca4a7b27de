package main

// This file holds `webknock helper`: one self-contained web page that
// computes a sequence's current URLs on the user's device and requests
// them in order.

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/knock"
)

// The page: markup, then its only script and style, inlined. The script
// and style are separate files so that the page's Content-Security-Policy
// can name them by hash.
var (
	//go:embed helper.html
	helperHTML string
	//go:embed helper.js
	helperJS string
	//go:embed helper.css
	helperCSS string

	helperTemplate = template.Must(template.New("helper.html").Parse(helperHTML))
)

func helperFlags(fs *pflag.FlagSet) {
	fs.String("sequence", "", "the sequence `NAME` (default: the only one)")
	fs.String("base", "", "the site to knock on, `URL`: its scheme and host, like https://www.example.com (required)")
	fs.Bool("passphrase", false, "the page asks for the passphrase the key was made from (init --one-time --passphrase) and holds no secret")
	fs.StringP("output", "o", "", "write the page to `FILE` (never overwritten)")
}

// runHelper is `webknock helper`.
func runHelper(_ context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	out, _ := fs.GetString("output")
	usePass, _ := fs.GetBool("passphrase")
	if out == "" {
		return usagef(env, fs, "-o FILE is required")
	}
	base, err := baseFlag(env, fs)
	if err != nil {
		return err
	}
	if base == "" {
		return usagef(env, fs, "--base URL is required: the site the page knocks on, like https://www.example.com")
	}
	s, ks, err := loadSequence(env, fs)
	if err != nil {
		return err
	}
	var salt []byte
	if usePass {
		if ks.OneTime == nil {
			return fmt.Errorf("sequence %s: static: --passphrase is for one-time sequences", s.Name)
		}
		data, err := readKeyFileData(s.OneTime.KeyFile)
		if err != nil {
			return fmt.Errorf("sequence %s: %w", s.Name, err)
		}
		kf, err := knock.ParseKeyFile(data)
		if err != nil {
			return fmt.Errorf("sequence %s: key file %s: %w", s.Name, s.OneTime.KeyFile, err)
		}
		if kf.Salt == nil {
			return fmt.Errorf("sequence %s: key file %s: the key was not made from a passphrase; make one with init --one-time --passphrase", s.Name, s.OneTime.KeyFile)
		}
		salt = kf.Salt
	}
	page, err := helperPage(ks, base, salt)
	if err != nil {
		return err
	}
	perm := os.FileMode(0o600)
	if salt != nil {
		perm = 0o644
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("page %s: %w", out, err)
	}
	err = writeNewFile(abs, page, perm)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("page %s: already exists; not overwriting it (remove it first)", abs)
	}
	if err != nil {
		return fmt.Errorf("page: %w", err)
	}
	switch {
	case salt != nil:
		fmt.Fprintf(env.stderr, "webknock helper: wrote %s: it holds the salt, not the key, and may be published; "+
			"it is as safe as the passphrase (with the page and one knock URL, guesses can be tested offline)\n", abs)
	case ks.OneTime != nil:
		fmt.Fprintf(env.stderr, "webknock helper: warning: %s holds the key of sequence %s (mode 0600): whoever has the page can knock; "+
			"keep it secret (a page that may be published: init --one-time --passphrase, helper --passphrase)\n", abs, ks.Name)
	default:
		fmt.Fprintf(env.stderr, "webknock helper: warning: %s holds the secret paths of sequence %s (mode 0600): whoever has the page can knock; keep it secret\n", abs, ks.Name)
	}
	return nil
}

// helperData is what the page's script reads (as JSON).
type helperData struct {
	Name   string   `json:"name"`
	Mode   string   `json:"mode"` // "static", "hmac" or "totp"
	Prefix string   `json:"prefix"`
	Steps  int      `json:"steps"` // hmac: derived steps before the knock page
	Paths  []string `json:"paths"` // static: every path; totp: the steps
	Period int64    `json:"period"`
	Skew   int      `json:"skew"`
	Base   string   `json:"base"`
	// Key is the key, base64; or the page derives it from a passphrase
	// with Salt (base64) and Iterations, and checks it against Check.
	Key        string `json:"key,omitempty"`
	Salt       string `json:"salt,omitempty"`
	Iterations int    `json:"iterations,omitempty"`
	Check      string `json:"check,omitempty"`
}

// helperView is what helper.html shows.
type helperView struct {
	Name, Base          string
	OneTime, Passphrase bool
	Skew                int
	Tolerance           string // how far the device's clock may be off
	CSP                 string
	Data                helperData
	Style               template.CSS // helper.css, verbatim
	Script              template.JS  // helper.js, verbatim
}

// helperPage returns the page for ks and base (scheme://host). With salt,
// the page asks for the passphrase instead of holding the key.
func helperPage(ks knock.Sequence, base string, salt []byte) ([]byte, error) {
	d := helperData{Name: ks.Name, Mode: "static", Base: base, Paths: []string{}}
	tolerance := time.Duration(0)
	if ot := ks.OneTime; ot == nil {
		d.Paths = append(append(d.Paths, ks.Steps...), ks.KnockPage)
	} else {
		d.Mode, d.Prefix, d.Skew = ot.Mode.String(), ot.Prefix, ot.Skew
		d.Period = int64(ot.Period / time.Second)
		tolerance = time.Duration(ot.Skew) * ot.Period
		if ot.Mode == knock.ModeHMAC {
			d.Steps = ot.Steps
		} else {
			d.Paths = append(d.Paths, ks.Steps...)
		}
		if salt != nil {
			d.Salt = base64.StdEncoding.EncodeToString(salt)
			d.Iterations = knock.KDFIterations
			d.Check = knock.KeyCheck(ot.Key)
		} else {
			d.Key = base64.StdEncoding.EncodeToString(ot.Key)
		}
	}
	csp := fmt.Sprintf("default-src 'none'; script-src '%s'; style-src '%s'; connect-src %s; img-src data:; base-uri 'none'; form-action 'none'",
		cspHash(helperJS), cspHash(helperCSS), base)
	var b bytes.Buffer
	err := helperTemplate.Execute(&b, helperView{
		Name: ks.Name, Base: base, OneTime: ks.OneTime != nil, Passphrase: salt != nil,
		Skew: d.Skew, Tolerance: shortDuration(tolerance), CSP: csp, Data: d,
		Style: template.CSS(helperCSS), Script: template.JS(helperJS),
	})
	if err != nil {
		return nil, fmt.Errorf("page: %w", err)
	}
	return b.Bytes(), nil
}

// cspHash returns the Content-Security-Policy source of an inline script
// or style.
func cspHash(text string) string {
	sum := sha256.Sum256([]byte(text))
	return "sha256-" + base64.StdEncoding.EncodeToString(sum[:])
}
