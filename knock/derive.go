package knock

// This file holds the one-time path formula of DESIGN.md ("One-time
// sequences"). Third-party clients implement it too, so it is fixed to the
// byte; the known-answer tests pin it.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
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
	mac := hmac.New(sha256.New, key)
	msg := make([]byte, 0, len(tokenContext)+len(name)+24)
	msg = append(msg, tokenContext...)
	msg = append(msg, 0)
	msg = append(msg, name...)
	msg = append(msg, 0)
	msg = strconv.AppendInt(msg, int64(i), 10)
	msg = append(msg, 0)
	msg = strconv.AppendInt(msg, t, 10)
	mac.Write(msg)
	var enc [43]byte
	base64.RawURLEncoding.Encode(enc[:], mac.Sum(nil))
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
