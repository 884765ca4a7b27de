package fleet

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	// Registers -update, so that `go test ./... -update` runs here too
	// (the package has no golden file).
	_ "github.com/webknock/webknock/internal/golden"
)

// The key of RFC 8032's first ed25519 test vector.
const (
	rfcSeedHex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
	rfcPubHex  = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	rfcSeedB64 = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A="
	rfcPubB64  = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
	// rfcPEM is what `openssl pkey` writes for the seed.
	rfcPEM = "-----BEGIN PRIVATE KEY-----\n" +
		"MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n" +
		"-----END PRIVATE KEY-----\n"
	// rfcPubPEM is its public key, as `openssl pkey -pubout` writes it.
	rfcPubPEM = "-----BEGIN PUBLIC KEY-----\n" +
		"MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n" +
		"-----END PUBLIC KEY-----\n"
	// Keys of types Go does not parse, made by openssl genpkey.
	ed448PEM = "-----BEGIN PRIVATE KEY-----\n" +
		"MEcCAQAwBQYDK2VxBDsEOcJov8L0FLFnwfJl4HKga7biHDFfHi+n0KoIpcgKZkIC\n" +
		"PWQ14YZVsYCeFJWtjXZq7HZJLRIJiFluiA==\n" +
		"-----END PRIVATE KEY-----\n"
	x448PEM = "-----BEGIN PRIVATE KEY-----\n" +
		"MEYCAQAwBQYDK2VvBDoEOJgKapuvBSWTQW1qMTy/gtO483s2gj2H6EgzGN4KaKLl\n" +
		"DbSAjXQZRngc7NF3TcxF+ssHVO+wUq+u\n" +
		"-----END PRIVATE KEY-----\n"
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// pkcs8PEM returns key as a PEM PRIVATE KEY block.
func pkcs8PEM(t testing.TB, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

type signingKeyCase struct {
	name string
	in   string
	want string // "" for the RFC 8032 key, else in the error
}

// signingKeyCases seed FuzzParseSigningKey too.
var signingKeyCases = []signingKeyCase{
	{"PEM", rfcPEM, ""},
	{"PEM without newline", strings.TrimSpace(rfcPEM), ""},
	{"PEM with CRLF and blank lines", "\r\n" + strings.ReplaceAll(rfcPEM, "\n", "\r\n") + "\r\n\r\n", ""},
	{"seed", rfcSeedB64, ""},
	{"seed line", rfcSeedB64 + "\n", ""},
	{"seed, spaces and CRLF", "  " + rfcSeedB64 + " \r\n", ""},

	{"empty", "", "empty; want a PEM PRIVATE KEY block"},
	{"blank", " \n\t\n", "empty; want"},
	{"seed without padding", strings.TrimSuffix(rfcSeedB64, "="), "not a signing key; want a PEM PRIVATE KEY block"},
	{"seed in base64url", strings.NewReplacer("/", "_", "+", "-").Replace(rfcSeedB64), "not a signing key"},
	{"seed on two lines", rfcSeedB64[:20] + "\n" + rfcSeedB64[20:], "not a signing key"},
	{"seed with a second line", rfcSeedB64 + "\nmore\n", "not a signing key"},
	{"seed and public key", base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(mustHex(rfcSeedHex))), "base64 of 64 bytes, not a 32-byte seed"},
	{"short seed", base64.StdEncoding.EncodeToString(make([]byte, 16)), "base64 of 16 bytes, not a 32-byte seed"},
	{"hex seed", rfcSeedHex, "base64 of 48 bytes, not a 32-byte seed"},
	{"text", "hello world", "not a signing key"},
	{"public key", rfcPubPEM, "PEM PUBLIC KEY block: this is a public key"},
	{"OpenSSH key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n", `PEM block of type "OPENSSH PRIVATE KEY"; want`},
	{"EC key", "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n", `PEM block of type "EC PRIVATE KEY"`},
	{"encrypted", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIGbMFcGCSqGSIb3DQEFDTBK\n-----END ENCRYPTED PRIVATE KEY-----\n", "encrypted PEM block"},
	{"encrypted, old style", "-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n", "encrypted PEM block"},
	{"broken PEM", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v\n", "broken PEM block"},
	{"two blocks", rfcPEM + rfcPEM, "more than one PEM block"},
	{"block and text", rfcPEM + "trailing\n", "more than one PEM block"},
	{"not PKCS#8", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PEM PRIVATE KEY block is not PKCS#8; want"},
	{"short ed25519", "-----BEGIN PRIVATE KEY-----\nMC0CAQAwBQYDK2VwBCEEH51hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn8=\n-----END PRIVATE KEY-----\n", "holds a malformed ed25519 key; want"},
	{"Ed448", ed448PEM, "holds key type Ed448, not ed25519; want"},
	{"X448", x448PEM, "holds key type X448, not ed25519"},
}

func TestParseSigningKey(t *testing.T) {
	want := ed25519.NewKeyFromSeed(mustHex(rfcSeedHex))
	for _, tc := range signingKeyCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSigningKey([]byte(tc.in))
			switch {
			case tc.want == "" && (err != nil || !got.Equal(want)):
				t.Errorf("ParseSigningKey(%q) = %x, %v, want %x", tc.in, got, err, want)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("ParseSigningKey(%q) = %x, %v, want an error with %q", tc.in, got, err, tc.want)
			}
			if err != nil && (strings.Contains(err.Error(), rfcSeedB64[:8]) || strings.Contains(err.Error(), rfcSeedHex[:8])) {
				t.Errorf("ParseSigningKey(%q) error quotes the key: %v", tc.in, err)
			}
		})
	}
	if pub := want.Public().(ed25519.PublicKey); !bytes.Equal(pub, mustHex(rfcPubHex)) {
		t.Fatalf("RFC 8032 public key %x, want %s", pub, rfcPubHex)
	}
}

// TestParseSigningKeyOtherTypes: keys Go parses but cannot sign grants with
// are refused, naming what they are.
func TestParseSigningKeyOtherTypes(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	xKey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  any
		want string
	}{
		{"RSA", rsaKey, "holds key type RSA-1024, not ed25519"},
		{"ECDSA", ecKey, "holds key type ECDSA P-256, not ed25519"},
		{"X25519", xKey, "holds key type X25519, not ed25519"},
	}
	for _, tc := range tests {
		in := pkcs8PEM(t, tc.key)
		if _, err := ParseSigningKey([]byte(in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSigningKey(%s key) = %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// TestParseSigningKeyOpenSSL: a key openssl makes is read, and its public
// key is openssl's.
func TestParseSigningKeyOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not on PATH: cannot check keys made by openssl genpkey")
	}
	file := filepath.Join(t.TempDir(), "signing.pem")
	if out, err := exec.Command("openssl", "genpkey", "-algorithm", "ed25519", "-out", file).CombinedOutput(); err != nil {
		t.Fatalf("openssl genpkey: %v\n%s", err, out)
	}
	der, err := exec.Command("openssl", "pkey", "-in", file, "-pubout", "-outform", "DER").Output()
	if err != nil {
		t.Fatalf("openssl pkey -pubout: %v", err)
	}
	if len(der) < ed25519.PublicKeySize {
		t.Fatalf("openssl pkey -pubout wrote %d bytes", len(der))
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := ParseSigningKey(b)
	if err != nil {
		t.Fatalf("ParseSigningKey(openssl's key): %v", err)
	}
	want := ed25519.PublicKey(der[len(der)-ed25519.PublicKeySize:])
	if pub := priv.Public().(ed25519.PublicKey); !pub.Equal(want) {
		t.Errorf("public key %s, openssl says %s", FormatPublicKey(pub), FormatPublicKey(want))
	}
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	if again, err := ReadSigningKey(file); err != nil || !again.Equal(priv) {
		t.Errorf("ReadSigningKey(openssl's key) = %v, want the key ParseSigningKey read", err)
	}
}

func TestMarshalSigningKey(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := MarshalSigningKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("-----BEGIN PRIVATE KEY-----\n")) {
		t.Errorf("MarshalSigningKey = %q, want a PEM PRIVATE KEY block", b)
	}
	if got, err := ParseSigningKey(b); err != nil || !got.Equal(priv) {
		t.Errorf("ParseSigningKey(MarshalSigningKey(k)) = %v, want k", err)
	}
	rfc, err := MarshalSigningKey(ed25519.NewKeyFromSeed(mustHex(rfcSeedHex)))
	if err != nil || string(rfc) != rfcPEM {
		t.Errorf("MarshalSigningKey(RFC 8032 key) = %q, %v, want openssl's %q", rfc, err, rfcPEM)
	}
	if _, err := MarshalSigningKey(priv[:32]); err == nil {
		t.Error("MarshalSigningKey(32 bytes) succeeded, want an error")
	}
}

func TestReadSigningKey(t *testing.T) {
	dir := t.TempDir()
	want := ed25519.NewKeyFromSeed(mustHex(rfcSeedHex))
	write := func(name, text string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return path
	}
	private := write("private.pem", rfcPEM, 0o600)
	link := filepath.Join(dir, "link.pem")
	if err := os.Symlink(private, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string // want: "" for the key, else in the error
	}{
		{"0600", private, ""},
		{"0400 seed", write("seed", rfcSeedB64+"\n", 0o400), ""},
		{"link to 0600", link, ""},
		{"0644", write("world.pem", rfcPEM, 0o644), "key file is readable or writable by group or others (mode 0644); chmod 600 it"},
		{"0640", write("group.pem", rfcPEM, 0o640), "(mode 0640); chmod 600 it"},
		{"0602", write("writable.pem", rfcPEM, 0o602), "(mode 0602)"},
		{"directory", dir, "key file is not a regular file but a directory"},
		{"fifo", fifo, "key file is not a regular file but a named pipe"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
		{"too large", write("large.pem", rfcPEM+strings.Repeat("\n", 64<<10), 0o600), "larger than 64 KiB"},
		{"not a key", write("garbage", "hello\n", 0o600), "not a signing key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadSigningKey(tc.path)
			switch {
			case tc.want == "" && (err != nil || !got.Equal(want)):
				t.Errorf("ReadSigningKey(%s) = %v, want the RFC 8032 key", tc.path, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), tc.path+": ")):
				t.Errorf("ReadSigningKey(%s) = %v, want an error starting with the path, with %q", tc.path, err, tc.want)
			}
		})
	}
	// Owned by another user (root can hand a file to one): that user could
	// read the key, and sign grants.
	if os.Geteuid() == 0 {
		theirs := write("theirs.pem", rfcPEM, 0o600)
		if err := os.Chown(theirs, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadSigningKey(theirs); err == nil || !strings.Contains(err.Error(), "key file is owned by uid 65534") {
			t.Errorf("ReadSigningKey of another user's file = %v", err)
		}
		if err := CheckPrivateFile(theirs, "credentials file"); err == nil || !strings.Contains(err.Error(), "credentials file is owned by uid 65534") {
			t.Errorf("CheckPrivateFile of another user's file = %v", err)
		}
	}
	if err := CheckPrivateFile(private, "credentials file"); err != nil {
		t.Errorf("CheckPrivateFile(0600) = %v", err)
	}
	if err := CheckPrivateFile(filepath.Join(dir, "world.pem"), "credentials file"); err == nil || !strings.Contains(err.Error(), "credentials file is readable or writable by group or others") {
		t.Errorf("CheckPrivateFile(0644) = %v", err)
	}
	if _, err := ReadSigningKey(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadSigningKey(missing) = %v, want fs.ErrNotExist", err)
	}
}

// trustedKeyCases seed FuzzParseTrustedKey too.
var trustedKeyCases = []struct {
	name string
	in   string
	want string // "" for the RFC 8032 public key, else in the error
}{
	{"key", rfcPubB64, ""},
	{"spaces around", " " + rfcPubB64 + "\n", ""},
	{"empty", "", "empty; want the standard base64"},
	{"no padding", strings.TrimSuffix(rfcPubB64, "="), "not base64; want"},
	{"base64url", strings.NewReplacer("/", "_", "+", "-").Replace(rfcPubB64), "not base64"},
	{"inner newline", rfcPubB64[:20] + "\n" + rfcPubB64[20:], "not base64"},
	{"non-zero padding bits", rfcPubB64[:42] + "p=", "not base64"},
	{"short", base64.StdEncoding.EncodeToString(make([]byte, 31)), "wrong length 31 bytes, want 32"},
	{"private key", base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(mustHex(rfcSeedHex))), "wrong length 64 bytes, want 32"},
	{"hex", rfcPubHex, "wrong length 48 bytes, want 32"},
}

func TestParseTrustedKey(t *testing.T) {
	want := ed25519.PublicKey(mustHex(rfcPubHex))
	for _, tc := range trustedKeyCases {
		got, err := ParseTrustedKey(tc.in)
		switch {
		case tc.want == "" && (err != nil || !got.Equal(want)):
			t.Errorf("%s: ParseTrustedKey(%q) = %x, %v, want %x", tc.name, tc.in, got, err, want)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: ParseTrustedKey(%q) = %x, %v, want an error with %q", tc.name, tc.in, got, err, tc.want)
		}
	}
	if got := FormatPublicKey(want); got != rfcPubB64 {
		t.Errorf("FormatPublicKey(RFC 8032 key) = %q, want %q", got, rfcPubB64)
	}
}

func TestKeyID(t *testing.T) {
	pub := ed25519.PublicKey(mustHex(rfcPubHex))
	id := KeyID(pub)
	// xxd -r -p <<<$rfcPubHex | sha256sum | cut -c1-12 | xxd -r -p | base64 | tr +/ -_
	if id != "If4x36FU" {
		t.Errorf("KeyID(RFC 8032 key) = %q, want %q", id, "If4x36FU")
	}
	other := make(ed25519.PublicKey, ed25519.PublicKeySize)
	if KeyID(other) == id || len(KeyID(other)) != 8 {
		t.Errorf("KeyID(zero key) = %q; want 8 characters, not %q", KeyID(other), id)
	}
}

func FuzzParseSigningKey(f *testing.F) {
	for _, tc := range signingKeyCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		priv, err := ParseSigningKey(b)
		if err != nil {
			return
		}
		if len(priv) != ed25519.PrivateKeySize {
			t.Fatalf("ParseSigningKey(%q) = %d bytes, want %d", b, len(priv), ed25519.PrivateKeySize)
		}
		if !priv.Equal(ed25519.NewKeyFromSeed(priv.Seed())) {
			t.Fatalf("ParseSigningKey(%q): public half does not match the seed", b)
		}
		pemText, err := MarshalSigningKey(priv)
		if err != nil {
			t.Fatalf("MarshalSigningKey(ParseSigningKey(%q)): %v", b, err)
		}
		if again, err := ParseSigningKey(pemText); err != nil || !again.Equal(priv) {
			t.Fatalf("ParseSigningKey(MarshalSigningKey(ParseSigningKey(%q))) = %v, want the same key", b, err)
		}
	})
}

func FuzzParseTrustedKey(f *testing.F) {
	for _, tc := range trustedKeyCases {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := ParseTrustedKey(s)
		if err != nil {
			return
		}
		if len(pub) != ed25519.PublicKeySize {
			t.Fatalf("ParseTrustedKey(%q) = %d bytes, want %d", s, len(pub), ed25519.PublicKeySize)
		}
		text := FormatPublicKey(pub)
		if text != strings.TrimSpace(s) {
			t.Fatalf("FormatPublicKey(ParseTrustedKey(%q)) = %q: a key has two spellings", s, text)
		}
		if again, err := ParseTrustedKey(text); err != nil || !again.Equal(pub) {
			t.Fatalf("ParseTrustedKey(FormatPublicKey(ParseTrustedKey(%q))) = %x, %v, want %x", s, again, err, pub)
		}
	})
}
