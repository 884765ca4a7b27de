package knock

// This file holds the one-time path formula of DESIGN.md ("One-time
// sequences"). Third-party clients implement it too, so it is fixed to the
// byte; the known-answer tests pin it.

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/hotp"
)

const (
	// KeyBytes is the length of a one-time key.
	KeyBytes = 32
	// TokenLen is the length of an hmac-mode token.
	TokenLen = 22
	// CodeLen is the length of a totp-mode code.
	CodeLen = 6
	// TOTPPeriod is the time step of totp mode (RFC 6238's default, what
	// authenticator apps use).
	TOTPPeriod = 30 * time.Second
	// tokenContext starts every HMAC message, so a key used elsewhere can
	// never produce a webknock token by accident.
	tokenContext = "webknock/v1"

	// KDFName names DeriveKey on a key file's second line.
	KDFName = "pbkdf2-sha256"
	// KDFIterations is DeriveKey's PBKDF2 iteration count.
	KDFIterations = 600000
	// SaltBytes is the length of DeriveKey's salt.
	SaltBytes = 16
	// checkContext is the message of KeyCheck, apart from every token's.
	checkContext = tokenContext + " check"
)

// ParseKey decodes a key file: the standard base64 of KeyBytes random bytes
// on its first line (spaces around it and a CR are ignored).
func ParseKey(data []byte) ([]byte, error) {
	line, _, _ := strings.Cut(string(data), "\n")
	line = strings.TrimSpace(line)
	if line == "" {
		return nil, errors.New("empty: want the base64 of 32 random bytes on the first line (openssl rand -base64 32)")
	}
	key, err := base64.StdEncoding.Strict().DecodeString(line)
	if err != nil {
		return nil, errors.New("first line is not standard base64: want the base64 of 32 random bytes (openssl rand -base64 32)")
	}
	if len(key) != KeyBytes {
		return nil, fmt.Errorf("%d bytes; want %d (openssl rand -base64 32)", len(key), KeyBytes)
	}
	return key, nil
}

// EncodeKey returns the key file text of key: what ParseKey reads.
func EncodeKey(key []byte) []byte {
	return []byte(base64.StdEncoding.EncodeToString(key) + "\n")
}

// DeriveKey returns the key made from a passphrase:
// PBKDF2-HMAC-SHA256(passphrase, salt, KDFIterations, KeyBytes). A browser
// computes the same with WebCrypto, so the passphrase can stand in for the
// key file.
func DeriveKey(passphrase string, salt []byte) []byte {
	key, err := pbkdf2.Key(sha256.New, passphrase, salt, KDFIterations, KeyBytes)
	if err != nil {
		// Only a FIPS 140-only mode refuses, and only salts shorter than ours.
		panic("knock: pbkdf2: " + err.Error())
	}
	return key
}

// KeyCheck returns the hex of the first 2 bytes of
// HMAC-SHA256(key, "webknock/v1 check"): enough to catch a mistyped
// passphrase, too short to confirm a guessed one (1 wrong in 65536 passes).
func KeyCheck(key []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(checkContext))
	return hex.EncodeToString(mac.Sum(nil)[:2])
}

// KeyFile is a key file's content: the key and, if it was made from a
// passphrase, the salt DeriveKey used.
type KeyFile struct {
	Key  []byte
	Salt []byte // nil: random key
}

// ParseKeyFile decodes a key file as ParseKey does, and its optional second
// line "pbkdf2-sha256 600000 SALT" (SALT the standard base64 of SaltBytes
// bytes) that a key made from a passphrase carries. A second line of any
// other kind is ignored, as ParseKey ignores it.
func ParseKeyFile(data []byte) (KeyFile, error) {
	key, err := ParseKey(data)
	if err != nil {
		return KeyFile{}, err
	}
	kf := KeyFile{Key: key}
	lines := strings.SplitN(string(data), "\n", 3)
	if len(lines) < 2 {
		return kf, nil
	}
	f := strings.Fields(lines[1])
	if len(f) == 0 || f[0] != KDFName {
		return kf, nil
	}
	if len(f) != 3 || f[1] != strconv.Itoa(KDFIterations) {
		return KeyFile{}, fmt.Errorf("second line: want %q, SALT the standard base64 of %d bytes", KDFName+" "+strconv.Itoa(KDFIterations)+" SALT", SaltBytes)
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(f[2])
	if err != nil || len(salt) != SaltBytes {
		return KeyFile{}, fmt.Errorf("second line: bad salt: want the standard base64 of %d bytes", SaltBytes)
	}
	kf.Salt = salt
	return kf, nil
}

// EncodeKeyFile returns the key file text of kf: what ParseKeyFile reads.
func EncodeKeyFile(kf KeyFile) []byte {
	b := EncodeKey(kf.Key)
	if kf.Salt != nil {
		b = fmt.Appendf(b, "%s %d %s\n", KDFName, KDFIterations, base64.StdEncoding.EncodeToString(kf.Salt))
	}
	return b
}

// TimeStep returns T for time at and period: floor(unix seconds / period).
func TimeStep(at time.Time, period time.Duration) int64 {
	p := int64(period / time.Second)
	s := at.Unix()
	t := s / p
	if s%p != 0 && s < 0 {
		t-- // floor, also before 1970
	}
	return t
}

// Token returns the hmac-mode token of step i (1-based; steps+1 is the knock
// page) of sequence name at time step t:
//
//	first 22 chars of base64url-without-padding(
//	  HMAC-SHA256(key, "webknock/v1" 0x00 name 0x00 decimal(i) 0x00 decimal(t)))
func Token(key []byte, name string, i int, t int64) string {
	return tokenWith(newTokenMAC(key), name, i, t)
}

// newTokenMAC returns the HMAC of key that tokenWith uses: keyed once, it
// derives every token of its sequence.
func newTokenMAC(key []byte) hash.Hash { return hmac.New(sha256.New, key) }

// tokenWith is Token with mac, HMAC-SHA256 of the key, reset and reused.
func tokenWith(mac hash.Hash, name string, i int, t int64) string {
	var buf [128]byte
	msg := append(buf[:0], tokenContext...)
	msg = append(msg, 0)
	msg = append(msg, name...)
	msg = append(msg, 0)
	msg = strconv.AppendInt(msg, int64(i), 10)
	msg = append(msg, 0)
	msg = strconv.AppendInt(msg, t, 10)
	mac.Reset()
	mac.Write(msg)
	var sum [sha256.Size]byte
	var enc [43]byte
	base64.RawURLEncoding.Encode(enc[:], mac.Sum(sum[:0]))
	return string(enc[:TokenLen])
}

// Code returns the 6-digit RFC 6238 code of key at time step t (SHA-1,
// 30 s steps): what an authenticator app enrolled with OTPAuthURI shows.
func Code(key []byte, t int64) string {
	code, err := hotp.GenerateCodeCustom(base32.StdEncoding.EncodeToString(key), uint64(t),
		hotp.ValidateOpts{Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		// The secret is our own base32 encoding: it always decodes.
		panic("knock: hotp: " + err.Error())
	}
	return code
}
