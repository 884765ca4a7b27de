package fleet

// The record of a grant in the bucket: its key, its value and the
// signature over it. This file is the one place of the wire format.

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Port is a TCP or UDP port.
type Port struct {
	Proto  string // "tcp" or "udp"
	Number uint16
}

func (p Port) String() string { return strconv.Itoa(int(p.Number)) + "/" + p.Proto }

func parsePort(s string) (Port, error) {
	num, proto, ok := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if !ok || err != nil || n == 0 || (proto != "tcp" && proto != "udp") {
		return Port{}, fmt.Errorf("bad port %s", quote(s))
	}
	return Port{Proto: proto, Number: uint16(n)}, nil
}

// Grant is what a knock opens, as the fleet carries it: Ports to Source
// (one address, or a network) until Until, because Source knocked Sequence
// at Knocked (the log's time).
type Grant struct {
	Source   netip.Prefix
	Sequence string
	Ports    []Port
	Knocked  time.Time
	Until    time.Time
}

// record is the value of a grant's key, as JSON. The signature covers
// every other field (signedBytes).
type record struct {
	V        int      `json:"v"`
	Group    string   `json:"group"`
	Source   string   `json:"source"`
	Sequence string   `json:"sequence"`
	Ports    []string `json:"ports"`
	Knocked  int64    `json:"knocked"` // unix nanoseconds
	Until    int64    `json:"until"`   // unix nanoseconds
	Detector string   `json:"detector"`
	KeyID    string   `json:"key"`
	Sig      []byte   `json:"sig"`
}

const recordVersion = 1

// maxRecord bounds a value: larger ones are refused unread.
const maxRecord = 4096

// Why a record is refused, as counted.
const (
	RefusedMalformed   = "malformed"       // not a record of ours, or its key does not match it
	RefusedGroup       = "group"           // signed for another group
	RefusedUnknownKey  = "unknown_key"     // signed by a key not in trusted_keys
	RefusedSignature   = "bad_signature"   // the signature does not verify
	RefusedExpired     = "expired"         // until has passed
	RefusedWindow      = "beyond_window"   // until lies beyond the sequence's window from now
	RefusedSequence    = "sequence"        // a sequence this host does not have
	RefusedFirewall    = "firewall"        // the local firewall refused it
	RefusedUsed        = "one_time_used"   // detector: another detector used the one-time step
	RefusedUnavailable = "bus_unavailable" // detector: the bus could not take it
)

// ErrRefused wraps every reason a record is refused; Reason tells which.
var ErrRefused = errors.New("grant record refused")

// refusal is a refused record: why, in words and as a counted reason.
type refusal struct {
	reason string
	msg    string
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return ErrRefused }
func refuse(reason, format string, args ...any) error {
	return &refusal{reason: reason, msg: fmt.Sprintf(format, args...)}
}

// Reason is the counted reason of a refusal (Refused…), or "" when err is
// not one.
func Reason(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	return ""
}

// Key is the bucket key of the grants of source to sequence:
// SEQUENCE.ADDRESS.BITS, the address with '.' and ':' written '-'
// (keys take only A-Z a-z 0-9 - _ = / and '.' between tokens).
func Key(source netip.Prefix, sequence string) string {
	a := source.Addr().String()
	a = strings.NewReplacer(".", "-", ":", "-").Replace(a)
	return sequence + "." + a + "." + strconv.Itoa(source.Bits())
}

// sign returns the record of g, signed by key for group.
func sign(g Grant, group, detector string, key ed25519.PrivateKey) ([]byte, error) {
	r := record{V: recordVersion, Group: group, Source: formatSource(g.Source), Sequence: g.Sequence,
		Knocked: g.Knocked.UnixNano(), Until: g.Until.UnixNano(), Detector: detector,
		KeyID: KeyID(key.Public().(ed25519.PublicKey))}
	for _, p := range g.Ports {
		r.Ports = append(r.Ports, p.String())
	}
	r.Sig = ed25519.Sign(key, r.signedBytes())
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) > maxRecord {
		return nil, fmt.Errorf("grant record of %d bytes: at most %d", len(b), maxRecord)
	}
	return b, nil
}

// signedBytes is what the signature covers: every field but the key id
// and the signature, each on its own line (no field holds a newline:
// verify checks them first).
func (r *record) signedBytes() []byte {
	var b bytes.Buffer
	b.WriteString("webknock-grant/v1\n")
	for _, f := range []string{r.Group, r.Source, r.Sequence, strings.Join(r.Ports, ","),
		strconv.FormatInt(r.Knocked, 10), strconv.FormatInt(r.Until, 10), r.Detector} {
		b.WriteString(f)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Verified is a record that passed verify: the grant and who made it.
type Verified struct {
	Grant
	Detector string // the host name the detector signed in
	KeyID    string // KeyID of the key that signed
}

// originPrefix begins the origin of every grant of the fleet.
const originPrefix = "fleet:"

// Origin is how the grant's origin shows in status: fleet:DETECTOR/KEYID.
func (v Verified) Origin() string { return originPrefix + v.Detector + "/" + v.KeyID }

// FromFleet reports whether origin (a grant's, as Origin wrote it) is the
// fleet's.
func FromFleet(origin string) bool { return strings.HasPrefix(origin, originPrefix) }

// verify checks the value of key: it must be a record of group, signed
// by one of trusted, for the key it is stored under. It does not judge
// times or sequences (the enforcer's policy does).
func verify(key string, value []byte, group string, trusted []ed25519.PublicKey) (Verified, error) {
	if len(value) > maxRecord {
		return Verified{}, refuse(RefusedMalformed, "key %s: value of %d bytes, at most %d", quote(key), len(value), maxRecord)
	}
	var r record
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Verified{}, refuse(RefusedMalformed, "key %s: not a grant record: %v", quote(key), err)
	}
	if r.V != recordVersion {
		return Verified{}, refuse(RefusedMalformed, "key %s: record version %d, want %d", quote(key), r.V, recordVersion)
	}
	for _, f := range []string{r.Group, r.Source, r.Sequence, r.Detector, strings.Join(r.Ports, ",")} {
		if strings.ContainsAny(f, "\n\x00") || len(f) > 256 {
			return Verified{}, refuse(RefusedMalformed, "key %s: a field holds a newline or is too long", quote(key))
		}
	}
	if r.Group != group {
		return Verified{}, refuse(RefusedGroup, "key %s: signed for group %s, this is %s", quote(key), quote(r.Group), quote(group))
	}
	src, err := parseSource(r.Source)
	if err != nil {
		return Verified{}, refuse(RefusedMalformed, "key %s: %v", quote(key), err)
	}
	if Key(src, r.Sequence) != key {
		return Verified{}, refuse(RefusedMalformed, "key %s holds the grant of %s to %s", quote(key), quote(r.Sequence), r.Source)
	}
	var pub ed25519.PublicKey
	for _, t := range trusted {
		if KeyID(t) == r.KeyID && ed25519.Verify(t, r.signedBytes(), r.Sig) {
			pub = t
			break
		}
	}
	if pub == nil {
		if !slices.ContainsFunc(trusted, func(t ed25519.PublicKey) bool { return KeyID(t) == r.KeyID }) {
			return Verified{}, refuse(RefusedUnknownKey, "key %s: signed by key %s, not in trusted_keys", quote(key), quote(r.KeyID))
		}
		return Verified{}, refuse(RefusedSignature, "key %s: the signature of key %s does not verify", quote(key), quote(r.KeyID))
	}
	v := Verified{Grant: Grant{Source: src, Sequence: r.Sequence, Knocked: time.Unix(0, r.Knocked), Until: time.Unix(0, r.Until)},
		Detector: r.Detector, KeyID: r.KeyID}
	if len(r.Ports) == 0 || len(r.Ports) > 64 {
		return Verified{}, refuse(RefusedMalformed, "key %s: %d ports", quote(key), len(r.Ports))
	}
	for _, s := range r.Ports {
		p, err := parsePort(s)
		if err != nil {
			return Verified{}, refuse(RefusedMalformed, "key %s: %v", quote(key), err)
		}
		v.Ports = append(v.Ports, p)
	}
	return v, nil
}

// formatSource writes a single address bare, a network as ADDR/BITS.
func formatSource(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// parseSource reads what formatSource writes; the network must be masked.
func parseSource(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return netip.Prefix{}, fmt.Errorf("bad source %s", quote(s))
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Masked() != p || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("bad source %s", quote(s))
	}
	return p, nil
}
