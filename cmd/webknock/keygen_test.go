package main

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/webknock/webknock/fleet"
)

// keygenPublicKey checks keygen's output and returns the public key on its
// last line.
func keygenPublicKey(t *testing.T, out, file string) ed25519.PublicKey {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "wrote the signing key to "+file) ||
		!strings.Contains(lines[0], "fleet.signing_key_file") || !strings.Contains(lines[1], "fleet.trusted_keys") {
		t.Fatalf("keygen stdout:\n%s\nwant 3 lines: the file, a hint, the public key", out)
	}
	pub, err := fleet.ParseTrustedKey(lines[2])
	if err != nil {
		t.Fatalf("keygen's last line %q: %v", lines[2], err)
	}
	if !strings.Contains(lines[1], fleet.KeyID(pub)) {
		t.Errorf("keygen hint %q lacks the key id %s", lines[1], fleet.KeyID(pub))
	}
	return pub
}

// keygenKey reads the key keygen wrote, checking its mode.
func keygenKey(t *testing.T, file string) ed25519.PrivateKey {
	t.Helper()
	fi, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %04o, want 0600", fi.Mode().Perm())
	}
	priv, err := fleet.ReadSigningKey(file)
	if err != nil {
		t.Fatalf("fleet.ReadSigningKey of keygen's file: %v", err)
	}
	return priv
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fleet.key")
	out, errOut, code := runCmd(t, "", "keygen", "-o", file)
	if code != exitOK || errOut != "" {
		t.Fatalf("keygen -o %s = exit %d, stderr %q", file, code, errOut)
	}
	priv := keygenKey(t, file)
	if pub := keygenPublicKey(t, out, file); !pub.Equal(priv.Public()) {
		t.Errorf("keygen printed %s, the file's public key is %s", fleet.FormatPublicKey(pub), fleet.FormatPublicKey(priv.Public().(ed25519.PublicKey)))
	}
	before, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	// Never overwritten without --force.
	out, errOut, code = runCmd(t, "", "keygen", "-o", file)
	if code != exitFail || out != "" || !strings.Contains(errOut, file+": already exists") || !strings.Contains(errOut, "--force") {
		t.Errorf("keygen over an existing file = exit %d, stdout %q, stderr %q; want exit %d naming the file and --force", code, out, errOut, exitFail)
	}
	if after, _ := os.ReadFile(file); !bytes.Equal(after, before) {
		t.Error("keygen without --force changed the existing key file")
	}

	// --force replaces it, even one with a wider mode, leaving nothing behind.
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code = runCmd(t, "", "keygen", "-o", file, "--force")
	if code != exitOK || errOut != "" {
		t.Fatalf("keygen --force = exit %d, stderr %q", code, errOut)
	}
	replaced := keygenKey(t, file)
	if pub := keygenPublicKey(t, out, file); !pub.Equal(replaced.Public()) {
		t.Errorf("keygen --force printed %s, the file's public key is %s", fleet.FormatPublicKey(pub), fleet.FormatPublicKey(replaced.Public().(ed25519.PublicKey)))
	}
	if replaced.Equal(priv) {
		t.Error("keygen --force kept the old key")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("after keygen --force the directory holds %d files, want only %s", len(entries), file)
	}

	// A relative -o is reported as the absolute path to configure.
	t.Chdir(dir)
	out, _, code = runCmd(t, "", "keygen", "-o", "relative.key")
	if code != exitOK {
		t.Fatalf("keygen -o relative.key = exit %d", code)
	}
	keygenPublicKey(t, out, filepath.Join(dir, "relative.key"))
}

func TestKeygenUsage(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no -o", []string{"keygen"}, "webknock keygen: -o FILE is required\nRun 'webknock keygen --help' for usage."},
		{"--force without -o", []string{"keygen", "--force"}, "-o FILE is required"},
		{"argument", []string{"keygen", "-o", filepath.Join(dir, "k"), "extra"}, `unexpected argument "extra"`},
		{"-o without FILE", []string{"keygen", "-o"}, "flag needs an argument"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := runCmd(t, "", tc.args...)
			if code != exitUsage || out != "" || !strings.Contains(errOut, tc.want) {
				t.Errorf("webknock %q = exit %d, stdout %q, stderr %q; want exit %d with %q", tc.args, code, out, errOut, exitUsage, tc.want)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a usage error wrote %d files", len(entries))
	}
}
