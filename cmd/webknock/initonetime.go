package main

// This file holds `webknock init --one-time`: a new key file and the
// one_time block that uses it, and for totp mode the enrollment of the key
// in an authenticator app.

import (
	"bufio"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/webknock/webknock/knock"
)

const (
	// config's limits on one_time.period and one_time.skew.
	initMinPeriod = 10 * time.Second
	initMaxPeriod = time.Hour
	initMaxSkew   = 10
	// minPassphrase bounds guessing: anyone holding a helper page and one
	// knock URL it made can try passphrases offline.
	minPassphrase = 12
	// totpIssuer names webknock in authenticator apps.
	totpIssuer = "webknock"
)

func initOneTimeFlags(fs *pflag.FlagSet) {
	fs.Bool("one-time", false, "make a one-time sequence: write a new key file, print a one_time block (paths change every period)")
	fs.Bool("totp", false, "with --one-time: static steps, then a knock page of the 6-digit code an authenticator app shows; prints the otpauth:// URI and a QR code")
	fs.String("key", "", "with --one-time: write the key to `FILE` (mode 0600; never overwritten) (default: NAME.key in the current directory)")
	fs.Bool("passphrase", false, "with --one-time: make the key from a passphrase (asked twice on a terminal, else the first line of standard input), for helper --passphrase")
	fs.Duration("period", time.Minute, "with --one-time, hmac mode: the time step; whole seconds from 10s to 1h")
	fs.Int("skew", 1, "with --one-time: time steps accepted either side of the server's, for clocks that differ")
}

// initOneTimeOwnFlags are the flags of initOneTimeFlags.
var initOneTimeOwnFlags = []string{"one-time", "totp", "key", "passphrase", "period", "skew"}

// initOneTime is a one-time sequence being made: its key, not yet written.
type initOneTime struct {
	totp    bool
	keyFile string // absolute
	key     knock.KeyFile
	period  time.Duration
	skew    int
}

// newInitOneTime checks the one-time flags and makes the key, reading the
// passphrase if asked; it writes nothing. It returns nil without
// --one-time or --totp.
func newInitOneTime(env *environment, fs *pflag.FlagSet, name, prefix string) (*initOneTime, error) {
	oneTime, _ := fs.GetBool("one-time")
	useTOTP, _ := fs.GetBool("totp")
	if !oneTime && !useTOTP {
		for _, f := range initOneTimeOwnFlags {
			if fs.Changed(f) {
				return nil, usagef(env, fs, "--%s: only with --one-time", f)
			}
		}
		return nil, nil
	}
	ot := &initOneTime{totp: useTOTP}
	ot.period, _ = fs.GetDuration("period")
	ot.skew, _ = fs.GetInt("skew")
	keyFile, _ := fs.GetString("key")
	usePass, _ := fs.GetBool("passphrase")

	switch {
	case useTOTP && fs.Changed("period") && ot.period != knock.TOTPPeriod:
		return nil, usagef(env, fs, "--period: totp mode uses %v, what authenticator apps use", knock.TOTPPeriod)
	case useTOTP:
		ot.period = knock.TOTPPeriod
	case fs.Changed("bytes"):
		return nil, usagef(env, fs, "--bytes: one-time paths are derived (%d characters); only --totp has random static steps", knock.TokenLen)
	case ot.period < initMinPeriod || ot.period > initMaxPeriod || ot.period%time.Second != 0:
		return nil, usagef(env, fs, "bad --period %v: want whole seconds from %v to %v", ot.period, initMinPeriod, initMaxPeriod)
	}
	if ot.skew < 0 || ot.skew > initMaxSkew {
		return nil, usagef(env, fs, "bad --skew %d: want 0 to %d time steps", ot.skew, initMaxSkew)
	}
	if n := len(prefix) + knock.TokenLen; n > initMaxPathLen {
		return nil, usagef(env, fs, "--prefix makes %d-byte one-time paths; at most %d allowed", n, initMaxPathLen)
	}
	if keyFile == "" {
		keyFile = name + ".key"
	}
	abs, err := filepath.Abs(keyFile)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", keyFile, err)
	}
	ot.keyFile = abs
	if _, err := os.Lstat(abs); err == nil {
		// Checked before anything is asked or written; writeKey refuses too.
		return nil, fmt.Errorf("key file %s: already exists; not overwriting it (another --name or --key, or remove it first)", abs)
	}

	if !usePass {
		ot.key.Key = make([]byte, knock.KeyBytes)
		rand.Read(ot.key.Key) // never fails: the program crashes if the system's source does
		return ot, nil
	}
	pass, err := readNewPassphrase(env)
	if err != nil {
		return nil, err
	}
	if n := utf8.RuneCountInString(pass); n < minPassphrase {
		return nil, fmt.Errorf("passphrase: %d characters; want at least %d (a page and one knock URL let anyone test guesses offline)", n, minPassphrase)
	}
	for _, r := range pass {
		if r >= utf8.RuneSelf {
			fmt.Fprintln(env.stderr, "webknock init: warning: the passphrase has non-ASCII characters; another device's keyboard may encode them differently")
			break
		}
	}
	ot.key.Salt = make([]byte, knock.SaltBytes)
	rand.Read(ot.key.Salt)
	ot.key.Key = knock.DeriveKey(pass, ot.key.Salt)
	return ot, nil
}

// readNewPassphrase reads a passphrase from the terminal without echo,
// twice, or else the first line of standard input.
func readNewPassphrase(env *environment) (string, error) {
	if f, ok := env.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		var got [2]string
		for i, prompt := range []string{"Passphrase: ", "Passphrase again: "} {
			fmt.Fprint(env.stderr, prompt)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(env.stderr)
			if err != nil {
				return "", fmt.Errorf("passphrase: %w", err)
			}
			got[i] = string(b)
		}
		if got[0] != got[1] {
			return "", errors.New("passphrase: the two differ")
		}
		return got[0], nil
	}
	line, err := bufio.NewReader(env.stdin).ReadString('\n')
	switch {
	case errors.Is(err, io.EOF) && line == "":
		return "", errors.New("passphrase: standard input is empty: give the passphrase as its first line, or run init on a terminal")
	case err != nil && !errors.Is(err, io.EOF):
		return "", fmt.Errorf("passphrase: read standard input: %w", err)
	}
	return strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r"), nil
}

// writeKey writes the key file, mode 0600, never replacing anything.
func (ot *initOneTime) writeKey() error {
	err := writeNewFile(ot.keyFile, knock.EncodeKeyFile(ot.key), 0o600)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("key file %s: already exists; not overwriting it (another --name or --key, or remove it first)", ot.keyFile)
	}
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	return nil
}

// block returns the sequences: block of the one-time sequence, whose paths
// start with otPrefix, under prefix (the web server's knock prefix);
// static are the static steps of totp mode.
func (ot *initOneTime) block(name, prefix, otPrefix string, steps int, static, ports []string) string {
	var b strings.Builder
	mode, timeout := "hmac", "30s"
	if ot.totp {
		mode = "totp"
		timeout = "2m" // time to read the code and type it
		b.WriteString("# Generated by webknock init --one-time --totp: request the steps, then\n")
		fmt.Fprintf(&b, "# %s followed by the 6-digit code of an authenticator app. Keep the steps secret.\n", otPrefix)
	} else {
		b.WriteString("# Generated by webknock init --one-time: the paths change every period;\n")
		fmt.Fprintf(&b, "# print the current ones with: webknock url -c FILE --sequence %s\n", name)
	}
	b.WriteString("# The key file holds the secret; key_file must name it where webknock runs.\n")
	fmt.Fprintf(&b, "# Make the web server answer %s with 404 and Cache-Control: no-store\n", prefix)
	b.WriteString("# (config/examples/nginx-webknock.conf, apache-webknock.conf).\n")
	b.WriteString("sequences:\n")
	fmt.Fprintf(&b, "  - name: %s\n", name)
	if ot.totp {
		b.WriteString("    steps:\n")
		for _, p := range static {
			fmt.Fprintf(&b, "      - %s\n", p)
		}
	}
	b.WriteString("    one_time:\n")
	fmt.Fprintf(&b, "      key_file: %s\n", strconv.Quote(ot.keyFile))
	fmt.Fprintf(&b, "      mode: %s\n", mode)
	fmt.Fprintf(&b, "      prefix: %s\n", otPrefix)
	if !ot.totp {
		fmt.Fprintf(&b, "      steps: %d\n", steps)
	}
	fmt.Fprintf(&b, "      period: %s\n", shortDuration(ot.period))
	fmt.Fprintf(&b, "      skew: %d\n", ot.skew)
	fmt.Fprintf(&b, "    timeout: %s\n", timeout)
	b.WriteString("    window: 10m\n")
	fmt.Fprintf(&b, "    ports: [%s]\n", strings.Join(ports, ", "))
	return b.String()
}

// report tells, on stderr, where the key went and, in totp mode, how to
// enroll it.
func (ot *initOneTime) report(w io.Writer, name string) error {
	fmt.Fprintf(w, "webknock init: wrote the key of sequence %s to %s (mode 0600): whoever reads it can knock\n", name, ot.keyFile)
	if ot.key.Salt != nil {
		fmt.Fprintf(w, "webknock init: the key is made from the passphrase; webknock helper --passphrase makes a page that asks for it\n")
	}
	if !ot.totp {
		return nil
	}
	uri, err := totpURI(name, ot.key.Key)
	if err != nil {
		return err
	}
	qrcode, err := qrText(uri)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nEnroll the key in an authenticator app: scan the code, or enter the URI.\nBoth hold the key; do not keep them anywhere else.\n\n%s\n%s", uri, qrcode)
	return nil
}

// totpURI returns the otpauth:// URI that enrolls key in authenticator
// apps: issuer webknock, account name, the codes of knock.Code.
func totpURI(name string, key []byte) (string, error) {
	k, err := totp.Generate(totp.GenerateOpts{
		Issuer: totpIssuer, AccountName: name, Secret: key,
		Period: uint(knock.TOTPPeriod / time.Second), Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1,
	})
	if err != nil {
		return "", fmt.Errorf("otpauth uri: %w", err)
	}
	return k.URL(), nil
}

// shortDuration formats d as configuration files write it: "1m", "90s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// writeNewFile writes data to a new file, refusing to replace anything
// already there (O_EXCL also refuses a symbolic link), and removes what it
// wrote if it fails.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
