package fleet

// This file holds the ed25519 key formats: the signing key file of a
// detector, the trusted public keys of an enforcer, and the short id that
// names a key in logs.

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// maxSigningKeyFileBytes bounds a signing key file: a PEM key is about 120
// bytes, so anything near this is not one.
const maxSigningKeyFileBytes = 64 << 10

// signingKeyFormats is the end of every "not a signing key" error.
const signingKeyFormats = "want a PEM PRIVATE KEY block holding a PKCS#8 ed25519 key " +
	"(webknock keygen, or openssl genpkey -algorithm ed25519), " +
	"or one line of standard base64 of the 32-byte ed25519 seed"

// trustedKeyFormat is the end of every "not a trusted key" error.
const trustedKeyFormat = "want the standard base64 (with = padding) of a 32-byte ed25519 public key, as webknock keygen prints it"

// ParseSigningKey decodes a signing key file: a PEM "PRIVATE KEY" block
// holding a PKCS#8 ed25519 key, or one line of standard base64 of the
// 32-byte seed. Errors never quote the input: it may be a secret.
func ParseSigningKey(b []byte) (ed25519.PrivateKey, error) {
	text := bytes.TrimSpace(b)
	switch {
	case len(text) == 0:
		return nil, errors.New("empty; " + signingKeyFormats)
	case bytes.HasPrefix(text, []byte("-----BEGIN ")):
		return parsePEMSigningKey(text)
	}
	// The decoder skips newlines, and a seed is one line.
	if bytes.ContainsAny(text, " \t\r\n") {
		return nil, errors.New("not a signing key; " + signingKeyFormats)
	}
	seed, err := base64.StdEncoding.Strict().DecodeString(string(text))
	if err != nil {
		return nil, errors.New("not a signing key; " + signingKeyFormats)
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("base64 of %d bytes, not a %d-byte seed; %s", len(seed), ed25519.SeedSize, signingKeyFormats)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// parsePEMSigningKey decodes text, which starts with a PEM header.
func parsePEMSigningKey(text []byte) (ed25519.PrivateKey, error) {
	block, rest := pem.Decode(text)
	switch {
	case block == nil:
		return nil, errors.New("broken PEM block; " + signingKeyFormats)
	case len(bytes.TrimSpace(rest)) > 0:
		return nil, errors.New("more than one PEM block; " + signingKeyFormats)
	case block.Type == "PUBLIC KEY":
		return nil, errors.New("PEM PUBLIC KEY block: this is a public key, not a signing key; " + signingKeyFormats)
	case block.Type == "ENCRYPTED PRIVATE KEY" || len(block.Headers) > 0:
		return nil, errors.New("encrypted PEM block: the daemon has no passphrase to decrypt it " +
			"(openssl pkey -in FILE -out FILE.plain writes it decrypted); " + signingKeyFormats)
	case block.Type != "PRIVATE KEY":
		return nil, fmt.Errorf("PEM block of type %q; %s", block.Type, signingKeyFormats)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		// x509's own error is for programmers: say what the block holds.
		switch alg := pkcs8Algorithm(block.Bytes); alg {
		case "":
			return nil, errors.New("PEM PRIVATE KEY block is not PKCS#8; " + signingKeyFormats)
		case "ed25519":
			return nil, errors.New("PEM PRIVATE KEY block holds a malformed ed25519 key; " + signingKeyFormats)
		default:
			return nil, fmt.Errorf("PEM PRIVATE KEY block holds key type %s, not ed25519; %s", alg, signingKeyFormats)
		}
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("PEM PRIVATE KEY block holds key type %s, not ed25519; %s", keyType(key), signingKeyFormats)
	}
	return priv, nil
}

// keyType names a key that x509.ParsePKCS8PrivateKey returned.
func keyType(key any) string {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ecdsa.PrivateKey:
		return "ECDSA " + k.Curve.Params().Name
	case *ecdh.PrivateKey:
		return fmt.Sprint(k.Curve())
	default:
		return fmt.Sprintf("%T", key)
	}
}

// pkcs8Algorithm names the algorithm of a PKCS#8 key that x509 refused
// (openssl genpkey also makes Ed448 and X448 keys), or returns "" when der
// is not PKCS#8.
func pkcs8Algorithm(der []byte) string {
	var k struct {
		Version int
		Algo    pkix.AlgorithmIdentifier
		Key     []byte
	}
	if _, err := asn1.Unmarshal(der, &k); err != nil || len(k.Algo.Algorithm) == 0 {
		return ""
	}
	switch k.Algo.Algorithm.String() {
	case "1.3.101.112":
		return "ed25519"
	case "1.3.101.111":
		return "X448"
	case "1.3.101.113":
		return "Ed448"
	}
	return "OID " + k.Algo.Algorithm.String()
}

// ReadSigningKey reads a signing key file as ParseSigningKey decodes it. The
// file must be private (checkPrivate): whoever reads the key can sign
// grants.
func ReadSigningKey(path string) (ed25519.PrivateKey, error) {
	// O_NONBLOCK: a FIFO put in the key's place is refused, not waited on.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, unwrapPath(err))
	}
	if err := checkPrivate(path, "key file", fi); err != nil {
		return nil, err
	}
	if fi.Size() > maxSigningKeyFileBytes {
		return nil, fmt.Errorf("%s: key file is larger than %d KiB; not a signing key", path, maxSigningKeyFileBytes>>10)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSigningKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, unwrapPath(err))
	}
	if len(b) > maxSigningKeyFileBytes { // it grew after Stat
		return nil, fmt.Errorf("%s: key file is larger than %d KiB; not a signing key", path, maxSigningKeyFileBytes>>10)
	}
	priv, err := ParseSigningKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return priv, nil
}

// fileKind names the kind of a file that is not regular.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "of mode " + m.Type().String()
}

// unwrapPath drops an *os.PathError's own "open PATH" so that the path is
// named once; errors.Is(err, fs.ErrNotExist) still holds.
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// MarshalSigningKey encodes priv as a PEM "PRIVATE KEY" block holding PKCS#8,
// the form openssl writes and ParseSigningKey reads.
func MarshalSigningKey(priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("signing key of %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("marshal signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseTrustedKey decodes an ed25519 public key: the standard base64, with
// padding, of its 32 bytes. Strict decoding gives each key one spelling.
func ParseTrustedKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("empty; " + trustedKeyFormat)
	}
	if strings.ContainsAny(s, " \t\r\n") { // the decoder would skip newlines
		return nil, errors.New("not base64; " + trustedKeyFormat)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, errors.New("not base64; " + trustedKeyFormat)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("wrong length %d bytes, want %d; %s", len(b), ed25519.PublicKeySize, trustedKeyFormat)
	}
	return ed25519.PublicKey(b), nil
}

// FormatPublicKey returns the standard base64 of pub: what ParseTrustedKey
// reads and fleet.trusted_keys lists.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

// KeyID returns a short printable id of pub for logs and status: the
// unpadded base64url of the first 6 bytes of SHA-256(pub), 8 characters.
// 48 bits tell an operator's few keys apart; they authenticate nothing.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:6])
}
