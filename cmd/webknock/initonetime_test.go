package main

import (
	"bytes"
	"encoding/base32"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/knock"
)

func TestInitOneTime(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		stdin  string
		mode   string
		steps  int // hmac: one_time.steps; totp: static steps
		prefix string
		period time.Duration
		skew   int
		pass   string // the key is made from it
	}{
		{name: "hmac", args: nil, mode: config.ModeHMAC, steps: 3, prefix: "/k/", period: time.Minute, skew: 1},
		{name: "hmac flags", args: []string{"--steps", "1", "--prefix", "/o", "--period", "2m30s", "--skew", "0", "--ports", "2222,53/udp"},
			mode: config.ModeHMAC, steps: 1, prefix: "/o/", period: 150 * time.Second, skew: 0},
		{name: "totp", args: []string{"--totp", "--steps", "2"}, mode: config.ModeTOTP, steps: 2, prefix: "/k/", period: 30 * time.Second, skew: 1},
		{name: "passphrase", args: []string{"--passphrase"}, stdin: kaPassphrase + "\n",
			mode: config.ModeHMAC, steps: 3, prefix: "/k/", period: time.Minute, skew: 1, pass: kaPassphrase},
		{name: "totp passphrase CRLF", args: []string{"--totp", "--passphrase", "--skew", "3"}, stdin: "pässwörd ünïcode\r\n",
			mode: config.ModeTOTP, steps: 3, prefix: "/k/", period: 30 * time.Second, skew: 3, pass: "pässwörd ünïcode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "seq.key")
			args := append([]string{"init", "--one-time", "--name", "seq", "--key", keyFile}, tc.args...)
			out, errOut, code := runCmd(t, tc.stdin, args...)
			if code != exitOK {
				t.Fatalf("webknock %q = exit %d\n%s", args, code, errOut)
			}
			fi, err := os.Stat(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
			}
			key, err := readKeyFile(keyFile)
			if err != nil {
				t.Fatalf("readKeyFile of init's key: %v", err)
			}

			cfg := loadInitOutput(t, out)
			if len(cfg.Sequences) != 1 || cfg.Sequences[0].OneTime == nil {
				t.Fatalf("init %q: want one one-time sequence:\n%s", args, out)
			}
			s := cfg.Sequences[0]
			ot := s.OneTime
			steps := len(s.Steps)
			if tc.mode == config.ModeHMAC {
				steps = ot.Steps
			}
			// Each sequence has a random prefix of its own under --prefix.
			ownPrefix := regexp.MustCompile("^" + regexp.QuoteMeta(tc.prefix) + "[A-Za-z0-9_-]{8}/$")
			if s.Name != "seq" || ot.KeyFile != keyFile || ot.Mode != tc.mode || steps != tc.steps || !ownPrefix.MatchString(ot.Prefix) ||
				ot.Period != tc.period || ot.Skew != tc.skew {
				t.Errorf("init %q = %s %+v, %d steps; want key file %s, mode %s, %d steps, prefix %sXXXXXXXX/, period %v, skew %d\n%s",
					args, s.Name, *ot, steps, keyFile, tc.mode, tc.steps, tc.prefix, tc.period, tc.skew, out)
			}
			if ks, err := knockSequence(&s); err != nil || !bytes.Equal(ks.OneTime.Key, key) {
				t.Errorf("knockSequence of init's output: %v", err)
			}

			data, _ := os.ReadFile(keyFile)
			kf, err := knock.ParseKeyFile(data)
			switch {
			case err != nil:
				t.Errorf("ParseKeyFile(%q): %v", data, err)
			case tc.pass == "" && kf.Salt != nil:
				t.Errorf("random key with a salt line: %q", data)
			case tc.pass != "" && (kf.Salt == nil || !bytes.Equal(knock.DeriveKey(tc.pass, kf.Salt), key)):
				t.Errorf("key file %q is not DeriveKey(%q, its salt)", data, tc.pass)
			}

			var uri string
			for line := range strings.Lines(errOut) {
				if strings.HasPrefix(line, "otpauth://") {
					uri = strings.TrimSpace(line)
				}
			}
			if tc.mode != config.ModeTOTP {
				if uri != "" {
					t.Errorf("hmac mode printed an enrollment URI:\n%s", errOut)
				}
				return
			}
			k, err := otp.NewKeyFromURL(uri)
			if err != nil {
				t.Fatalf("otpauth URI in %q: %v", errOut, err)
			}
			want := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(key)
			if k.Issuer() != "webknock" || k.AccountName() != "seq" || k.Secret() != want || k.Period() != 30 ||
				k.Digits() != otp.DigitsSix || k.Algorithm() != otp.AlgorithmSHA1 {
				t.Errorf("otpauth URI %q: issuer %q account %q secret %q period %d; want webknock, seq, %s, 30 s, 6 digits, SHA1",
					k.URL(), k.Issuer(), k.AccountName(), k.Secret(), k.Period(), want)
			}
			if !strings.Contains(errOut, strings.Repeat("█", 20)) {
				t.Errorf("no QR code on stderr:\n%s", errOut)
			}
			if strings.Contains(out, "otpauth") || strings.Contains(out, want) {
				t.Errorf("stdout, which may be appended to the configuration, holds the key:\n%s", out)
			}
		})
	}
}

// TestInitOneTimeDefaultKey: without --key the key goes to NAME.key in the
// current directory, named with its absolute path; an existing one is
// never overwritten, not even through a symbolic link.
func TestInitOneTimeDefaultKey(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	out, errOut, code := runCmd(t, "", "init", "--one-time", "--name", "alice")
	if code != exitOK {
		t.Fatalf("init --one-time = exit %d: %s", code, errOut)
	}
	keyFile := filepath.Join(dir, "alice.key")
	if cfg := loadInitOutput(t, out); cfg.Sequences[0].OneTime.KeyFile != keyFile {
		t.Errorf("key_file %q, want %q", cfg.Sequences[0].OneTime.KeyFile, keyFile)
	}
	if !strings.Contains(errOut, keyFile) {
		t.Errorf("stderr %q does not name %s", errOut, keyFile)
	}
	before, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(filepath.Join(dir, "target.key"), link); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"init", "--one-time", "--name", "alice"},
		{"init", "--one-time", "--totp", "--name", "alice", "--key", keyFile},
		{"init", "--one-time", "--key", link},
		{"init", "--one-time", "--passphrase", "--name", "alice"},
	} {
		out, errOut, code := runCmd(t, kaPassphrase+"\n", args...)
		if code != exitFail || out != "" || !strings.Contains(errOut, "already exists; not overwriting it") {
			t.Errorf("webknock %q over an existing key = exit %d, stdout %q, stderr %q; want exit 1, no output", args, code, out, errOut)
		}
	}
	if after, _ := os.ReadFile(keyFile); !bytes.Equal(after, before) {
		t.Errorf("key file changed from %q to %q", before, after)
	}
	if _, err := os.Lstat(filepath.Join(dir, "target.key")); err == nil {
		t.Error("init --one-time followed a symbolic link")
	}
}

func TestInitOneTimeBadFlags(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		stdin string
		code  int
		want  string // in stderr
	}{
		{"key without one-time", []string{"--key", "x.key"}, "", exitUsage, "--key: only with --one-time"},
		{"passphrase without one-time", []string{"--passphrase"}, "", exitUsage, "--passphrase: only with --one-time"},
		{"bytes in hmac mode", []string{"--one-time", "--bytes", "16"}, "", exitUsage, "--bytes: one-time paths are derived"},
		{"short period", []string{"--one-time", "--period", "5s"}, "", exitUsage, "bad --period 5s"},
		{"fractional period", []string{"--one-time", "--period", "10500ms"}, "", exitUsage, "bad --period 10.5s"},
		{"totp period", []string{"--totp", "--period", "1m"}, "", exitUsage, "--period: totp mode uses 30s"},
		{"skew", []string{"--one-time", "--skew", "11"}, "", exitUsage, "bad --skew 11"},
		{"negative skew", []string{"--one-time", "--skew", "-1"}, "", exitUsage, "bad --skew -1"},
		{"long prefix", []string{"--one-time", "--prefix", "/" + strings.Repeat("k", 180) + "/"}, "", exitUsage, "one-time paths; at most 200"},
		{"short passphrase", []string{"--one-time", "--passphrase"}, "short pass\n", exitFail, "passphrase: 10 characters; want at least 12"},
		{"no passphrase", []string{"--one-time", "--passphrase"}, "", exitFail, "passphrase: standard input is empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			args := append([]string{"init", "--key", filepath.Join(dir, "k.key")}, tc.args...)
			if tc.args[0] != "--one-time" && tc.args[0] != "--totp" {
				args = append([]string{"init"}, tc.args...)
			}
			out, errOut, code := runCmd(t, tc.stdin, args...)
			if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("webknock %q = exit %d, stdout %q, stderr %q; want exit %d with %q", args, code, out, errOut, tc.code, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) > 0 {
				t.Errorf("webknock %q left %s", args, entries[0].Name())
			}
		})
	}
}
