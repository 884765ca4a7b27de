// Package fleet carries grants between webknock daemons through a NATS
// JetStream key-value bucket, so that one knock on any web server opens
// every SSH host of the fleet.
//
// A detector (webknock reading a web server's log) puts each grant into
// the bucket webknock-<group>-grants under a key of its own (source and
// sequence), with the grant's remaining time as the key's TTL, signed with
// its ed25519 key. An enforcer (webknock on an SSH host) watches the
// bucket: it takes the live keys first (the snapshot), then every change;
// it verifies each record against its trusted keys and its own sequences
// and applies it through its local firewall, whose rules the kernel
// expires at the grant's end. A key deleted (a revoke) ends the grant at
// once. One-time steps are marked used with create-if-absent in
// webknock-<group>-used, so that two detectors reading the same stream
// never grant a replay.
//
// The bus down means no new grants: a detector's publish fails and the
// grant is not made anywhere (fail closed); an enforcer keeps what it
// applied, which the kernel still ends on time, and when it reconnects it
// reconciles with the snapshot, removing what was revoked meanwhile.
package fleet

import (
	"errors"
	"regexp"
)

// Roles of a daemon in a fleet.
const (
	RoleDetector = "detector" // publishes the grants of its logs
	RoleEnforcer = "enforcer" // applies the grants of the bus
	RoleBoth     = "both"     // both: its own grants too come back through the bus
)

// IsDetector reports whether role publishes grants.
func IsDetector(role string) bool { return role == RoleDetector || role == RoleBoth }

// IsEnforcer reports whether role applies grants from the bus.
func IsEnforcer(role string) bool { return role == RoleEnforcer || role == RoleBoth }

// groupRe is what a group may be: it goes into bucket (stream) names.
var groupRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// CheckGroup checks a fleet group name.
func CheckGroup(g string) error {
	if !groupRe.MatchString(g) {
		return errors.New("bad group " + quote(g) + ": want 1 to 32 characters of A-Z a-z 0-9 _ -")
	}
	return nil
}

// GrantsBucket and UsedBucket are the key-value buckets of a group.
func GrantsBucket(group string) string { return "webknock-" + group + "-grants" }

// UsedBucket is the bucket of the one-time steps used in group.
func UsedBucket(group string) string { return "webknock-" + group + "-used" }

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return "\"" + s + "\""
}
