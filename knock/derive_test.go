package knock

import (
	"bytes"
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
