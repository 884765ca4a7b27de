package knock

import (
	"bytes"
	"encoding/hex"
	"testing"
	"time"
)

// kaKey is the key of the known-answer vectors: the bytes 0 to 31.
var kaKey = func() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

// TestTokenKnownAnswers pins the formula of DESIGN.md. The expected tokens
// were computed by an independent implementation (Python's hmac and
// base64 modules), so a third-party client can check itself against them.
func TestTokenKnownAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		i    int
		t    int64
		want string
	}{
		{"alice", 1, 29000000, "EhLoPRYwFyvlcYIWUaq2FP"},
		{"alice", 2, 29000000, "R1CIBn5hN_1ofVo7mkMR6d"},
		{"alice", 3, 29000000, "D1vqnsRa2s9ydmb894Vg0c"},
		{"alice", 1, 29000001, "4N5ZWJa3PZ9xJQS6aXcEwe"},
		{"ssh-ops", 1, 0, "4gnaEtnFrz7KiVk424FwkV"},
		{"x", 10, -1, "BeaZPP2xgSyvXlsqCDLx8Q"},
	} {
		if got := Token(kaKey, tc.name, tc.i, tc.t); got != tc.want {
			t.Errorf("Token(%q, %d, %d) = %q, want %q", tc.name, tc.i, tc.t, got, tc.want)
		}
	}
}

// TestCodeRFC6238 checks the totp codes against the SHA-1 test vectors of
// RFC 6238 appendix B (the last six of their eight digits).
func TestCodeRFC6238(t *testing.T) {
	key := []byte("12345678901234567890")
	for _, tc := range []struct {
		unix int64
		want string
	}{
		{59, "287082"},
		{1111111109, "081804"},
		{1111111111, "050471"},
		{1234567890, "005924"},
		{2000000000, "279037"},
		{20000000000, "353130"},
	} {
		step := TimeStep(time.Unix(tc.unix, 0), TOTPPeriod)
		if got := Code(key, step); got != tc.want {
			t.Errorf("Code at %d = %q, want %q", tc.unix, got, tc.want)
		}
	}
}

func TestTimeStep(t *testing.T) {
	for _, tc := range []struct {
		unix   int64
		period time.Duration
		want   int64
	}{
		{0, time.Minute, 0},
		{59, time.Minute, 0},
		{60, time.Minute, 1},
		{1740000000, time.Minute, 29000000},
		{-1, time.Minute, -1},
		{-60, time.Minute, -1},
		{-61, time.Minute, -2},
		{89, 30 * time.Second, 2},
	} {
		if got := TimeStep(time.Unix(tc.unix, 0), tc.period); got != tc.want {
			t.Errorf("TimeStep(%d, %v) = %d, want %d", tc.unix, tc.period, got, tc.want)
		}
	}
}

func TestParseKey(t *testing.T) {
	good := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	for _, tc := range []struct {
		in   string
		ok   bool
		desc string
	}{
		{good + "\n", true, "a line"},
		{good, true, "no newline"},
		{"  " + good + " \r\nrest is ignored\n", true, "spaces, CRLF, more lines"},
		{"", false, "empty"},
		{"\n" + good, false, "first line empty"},
		{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", false, "no padding"},
		{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8-", false, "base64url"},
		{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYX", false, "24 bytes"},
		{"not base64 at all!", false, "garbage"},
	} {
		key, err := ParseKey([]byte(tc.in))
		if tc.ok != (err == nil) {
			t.Errorf("%s: ParseKey(%q) error %v, want ok=%v", tc.desc, tc.in, err, tc.ok)
			continue
		}
		if tc.ok && !bytes.Equal(key, kaKey) {
			t.Errorf("%s: key %x, want %x", tc.desc, key, kaKey)
		}
	}
	if k, err := ParseKey(EncodeKey(kaKey)); err != nil || !bytes.Equal(k, kaKey) {
		t.Errorf("ParseKey(EncodeKey(k)) = %x, %v", k, err)
	}
}

// kaSalt is the salt of the passphrase vectors: the bytes 0 to 15.
var kaSalt = kaKey[:SaltBytes]

// TestDeriveKeyKnownAnswers pins DeriveKey and KeyCheck, and the tokens of a
// key made from a passphrase. The expected values were computed with
// Python's hashlib.pbkdf2_hmac and hmac modules.
func TestDeriveKeyKnownAnswers(t *testing.T) {
	for _, tc := range []struct {
		pass   string
		key    string // hex
		check  string
		tokens [3]string // "carol", i = 1..3, T = 29000000
	}{
		{"correct horse battery staple", "ef177144eec9420cbc1093d2a8b344a92bc506d0d4ec9c028dd19f8324d8c1e6", "9eaf",
			[3]string{"9XPezBOcHUaz_u3UFRaty0", "pOB_SrcpGDGaCiZxdC0MKW", "dCuL8zP9d7CkQKF_oAuJbM"}},
		{"pässwörd ünïcode", "3bc4dc4928ca45c4bc8ba5a4a74bd630ec9b4111d3b4d0d1f8488048e1017bc8", "432a",
			[3]string{"d9B3OGXNM9z7tpvj5QYVO7", "CLis8Aq10XC7ygDC7zGh-h", "ohqjR3wudWvy6BVoJJpFzu"}},
	} {
		key := DeriveKey(tc.pass, kaSalt)
		if got := hex.EncodeToString(key); got != tc.key {
			t.Errorf("DeriveKey(%q) = %s, want %s", tc.pass, got, tc.key)
			continue
		}
		if got := KeyCheck(key); got != tc.check {
			t.Errorf("KeyCheck(DeriveKey(%q)) = %s, want %s", tc.pass, got, tc.check)
		}
		for i, want := range tc.tokens {
			if got := Token(key, "carol", i+1, 29000000); got != want {
				t.Errorf("Token(DeriveKey(%q), carol, %d) = %q, want %q", tc.pass, i+1, got, want)
			}
		}
	}
	if got := KeyCheck(kaKey); got != "44c8" {
		t.Errorf("KeyCheck(0..31) = %s, want 44c8", got)
	}
}

// TestCodeKnownAnswers pins the totp codes of a 32-byte key, as a phone
// computes them (Python's hmac, RFC 4226 dynamic truncation).
func TestCodeKnownAnswers(t *testing.T) {
	for _, tc := range []struct {
		unix int64
		want string
	}{
		{1740000000, "691415"},
		{1740000029, "691415"},
		{1740000030, "740077"},
		{59, "555770"},
	} {
		if got := Code(kaKey, TimeStep(time.Unix(tc.unix, 0), TOTPPeriod)); got != tc.want {
			t.Errorf("Code(0..31) at %d = %q, want %q", tc.unix, got, tc.want)
		}
	}
}

const (
	kaKeyB64  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	kaSaltB64 = "AAECAwQFBgcICQoLDA0ODw=="
)

// parseKeyFileCases seed FuzzParseKey too.
var parseKeyFileCases = []struct {
	desc string
	in   string
	ok   bool
	salt bool
}{
	{"key only", kaKeyB64 + "\n", true, false},
	{"salt", kaKeyB64 + "\npbkdf2-sha256 600000 " + kaSaltB64 + "\n", true, true},
	{"salt, CRLF, spaces", kaKeyB64 + "\r\n  pbkdf2-sha256  600000\t" + kaSaltB64 + " \r\n", true, true},
	{"salt, no newline", kaKeyB64 + "\npbkdf2-sha256 600000 " + kaSaltB64, true, true},
	{"other second line", kaKeyB64 + "\nmade by hand\n", true, false},
	{"blank second line", kaKeyB64 + "\n\npbkdf2-sha256 600000 " + kaSaltB64 + "\n", true, false},
	{"other iterations", kaKeyB64 + "\npbkdf2-sha256 1000 " + kaSaltB64 + "\n", false, false},
	{"no salt", kaKeyB64 + "\npbkdf2-sha256 600000\n", false, false},
	{"extra field", kaKeyB64 + "\npbkdf2-sha256 600000 " + kaSaltB64 + " x\n", false, false},
	{"short salt", kaKeyB64 + "\npbkdf2-sha256 600000 AAECAwQFBgcICQoL\n", false, false},
	{"salt not base64", kaKeyB64 + "\npbkdf2-sha256 600000 AAECAwQFBgcICQoLDA0ODw\n", false, false},
	{"bad key", "AAEC\npbkdf2-sha256 600000 " + kaSaltB64 + "\n", false, false},
}

func TestParseKeyFile(t *testing.T) {
	for _, tc := range parseKeyFileCases {
		kf, err := ParseKeyFile([]byte(tc.in))
		if tc.ok != (err == nil) {
			t.Errorf("%s: ParseKeyFile(%q) error %v, want ok=%v", tc.desc, tc.in, err, tc.ok)
			continue
		}
		if !tc.ok {
			continue
		}
		if !bytes.Equal(kf.Key, kaKey) || (kf.Salt != nil) != tc.salt || (tc.salt && !bytes.Equal(kf.Salt, kaSalt)) {
			t.Errorf("%s: ParseKeyFile(%q) = key %x salt %x, want key %x, salt %v", tc.desc, tc.in, kf.Key, kf.Salt, kaKey, tc.salt)
		}
	}
	for _, kf := range []KeyFile{{Key: kaKey}, {Key: kaKey, Salt: kaSalt}} {
		got, err := ParseKeyFile(EncodeKeyFile(kf))
		if err != nil || !bytes.Equal(got.Key, kf.Key) || !bytes.Equal(got.Salt, kf.Salt) {
			t.Errorf("ParseKeyFile(EncodeKeyFile(%x, %x)) = %x, %x, %v", kf.Key, kf.Salt, got.Key, got.Salt, err)
		}
	}
	if want := kaKeyB64 + "\npbkdf2-sha256 600000 " + kaSaltB64 + "\n"; string(EncodeKeyFile(KeyFile{Key: kaKey, Salt: kaSalt})) != want {
		t.Errorf("EncodeKeyFile = %q, want %q", EncodeKeyFile(KeyFile{Key: kaKey, Salt: kaSalt}), want)
	}
}

// FuzzParseKey checks that the key file parsers agree: ParseKeyFile
// accepts only what ParseKey accepts, with the same key, and what it
// accepts encodes back to a file it reads the same.
func FuzzParseKey(f *testing.F) {
	for _, tc := range parseKeyFileCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		key, errKey := ParseKey(data)
		kf, err := ParseKeyFile(data)
		if errKey != nil {
			if err == nil {
				t.Fatalf("ParseKeyFile(%q) accepts what ParseKey refuses: %v", data, errKey)
			}
			return
		}
		if len(key) != KeyBytes {
			t.Fatalf("ParseKey(%q) = %d bytes", data, len(key))
		}
		if err != nil {
			return
		}
		if !bytes.Equal(kf.Key, key) || (kf.Salt != nil && len(kf.Salt) != SaltBytes) {
			t.Fatalf("ParseKeyFile(%q) = key %x salt %x; ParseKey: %x", data, kf.Key, kf.Salt, key)
		}
		again, err := ParseKeyFile(EncodeKeyFile(kf))
		if err != nil || !bytes.Equal(again.Key, kf.Key) || !bytes.Equal(again.Salt, kf.Salt) {
			t.Fatalf("ParseKeyFile(EncodeKeyFile(%x, %x)) = %x, %x, %v", kf.Key, kf.Salt, again.Key, again.Salt, err)
		}
	})
}
