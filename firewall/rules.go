package firewall

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// The rules webknock writes carry one of these comments, so that they can be
// recognised in `iptables -S` output and, for grants, rebuilt from it.
const (
	commentPrefix  = "webknock:"
	commentAllow   = commentPrefix + "allow"
	commentProtect = commentPrefix + "protect"
	commentReset   = commentPrefix + "reset"
	commentOwner   = commentPrefix + "owner"
	datestopLayout = "2006-01-02T15:04:05"
	table          = "filter"
)

// maxUntil is the last second the kernel's time match can hold (a signed
// 32-bit time_t); iptables refuses a later --datestop.
var maxUntil = time.Unix(1<<31-1, 0).UTC()

// seqRe is what config accepts as a sequence name; it goes into comments.
var seqRe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

type ruleKind uint8

const (
	kindGrant   ruleKind = iota + 1 // accept one client on one port until a time
	kindAllow                       // accept an always_allow network on a protected port
	kindProtect                     // drop NEW connections to a protected port
	kindMarker                      // the ownership marker: matches all, no target, counts only
	// Protect's resets of TCP packets of sessions that conntrack lost (an
	// entry deleted to end a session, or expired): without them the
	// session would hang, or come back to life.
	kindResetNew   // reset NEW packets to a protected TCP port that are not a SYN
	kindResetReply // reset packets to a protected TCP port that conntrack took up from our side, bar RSTs
	kindSet        // accept what a grant set holds: the source and the destination port
)

// markerFor is the rule that starts the chain of the webknock whose state
// directory is dir: it says whose the chain is, so that a chain of others
// is never taken, nor one of a webknock with another state directory (two
// daemons on one chain would delete each other's grants). Having no target,
// it changes no packet's fate.
func markerFor(dir string) rule {
	if dir == "" {
		return rule{kind: kindMarker}
	}
	dir = filepath.Clean(dir)
	if len(dir) > maxOwner {
		// A comment holds 255 bytes; a longer directory is named by hash.
		sum := sha256.Sum256([]byte(dir))
		dir = "sha256:" + hex.EncodeToString(sum[:12])
	}
	return rule{kind: kindMarker, owner: dir}
}

// maxOwner is the longest state directory a marker names as it is.
const maxOwner = 200

// rule is one rule of ours in our chain. It is comparable: two rules are the
// same rule when they are ==.
type rule struct {
	kind  ruleKind
	src   netip.Prefix // grant: the client or its network; allow: the network; protect, reset: none
	port  Port
	seq   string // grant only
	until int64  // grant only: unix seconds
	owner string // marker only: the state directory, or "" for none
	set   string // set only: the ipset's name
}

// args is the rule specification for Insert, Append and Delete.
func (r rule) args() []string {
	if r.kind == kindMarker {
		c := commentOwner
		if r.owner != "" {
			c += ":" + r.owner
		}
		return []string{"-m", "comment", "--comment", c}
	}
	if r.kind == kindSet {
		return []string{"-m", "set", "--match-set", r.set, "src,dst", "-m", "comment", "--comment", commentGrants, "-j", "ACCEPT"}
	}
	var a []string
	if r.src.IsValid() {
		a = append(a, "-s", r.src.String())
	}
	a = append(a, "-p", r.port.Proto, "--dport", strconv.Itoa(int(r.port.Number)))
	switch r.kind {
	case kindGrant:
		a = append(a, "-m", "time", "--datestop", time.Unix(r.until, 0).UTC().Format(datestopLayout),
			"-m", "comment", "--comment", grantComment(r.seq, r.until), "-j", "ACCEPT")
	case kindAllow:
		a = append(a, "-m", "comment", "--comment", commentAllow, "-j", "ACCEPT")
	case kindProtect:
		a = append(a, "-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", commentProtect, "-j", "DROP")
	case kindResetNew:
		a = append(a, "!", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-m", "conntrack", "--ctstate", "NEW",
			"-m", "comment", "--comment", commentReset, "-j", "REJECT", "--reject-with", "tcp-reset")
	case kindResetReply:
		a = append(a, "!", "--tcp-flags", "RST", "RST", "-m", "conntrack", "--ctdir", "REPLY",
			"-m", "comment", "--comment", commentReset, "-j", "REJECT", "--reject-with", "tcp-reset")
	}
	return a
}

func (r rule) String() string { return strings.Join(r.args(), " ") }

func grantComment(seq string, until int64) string {
	return commentPrefix + seq + ":" + strconv.FormatInt(until, 10)
}

// tailRules is the protect tail of family fam: the always_allow accepts,
// then for each port the resets (TCP) and the drop of NEW connections.
// Empty unless protect is on.
//
// The resets end at once a session whose conntrack entry was deleted
// (KillSessions) or lost. Its next packet from the client is taken up by
// conntrack as NEW (nf_conntrack_tcp_loose) and, dropped, would hang the
// session until TCP gives up; reset, it ends it. Its next packet from us
// is taken up in the other direction, and the client's answers would pass
// as ESTABLISHED: those are reset too (a RST is let through, so that our
// side learns of the end). A SYN is left to the drop: a stranger's new
// connection sees nothing.
func tailRules(t tail, fam family) []rule {
	if !t.protect {
		return nil
	}
	var rs []rule
	for _, n := range t.allow {
		if familyOf(n.Addr()) != fam {
			continue
		}
		for _, p := range t.ports {
			rs = append(rs, rule{kind: kindAllow, src: n, port: p})
		}
	}
	for _, p := range t.ports {
		if p.Proto == "tcp" {
			rs = append(rs, rule{kind: kindResetNew, port: p}, rule{kind: kindResetReply, port: p})
		}
		rs = append(rs, rule{kind: kindProtect, port: p})
	}
	return rs
}

// listed is one `-A CHAIN ...` line of `iptables -S CHAIN`: its rule
// specification, and the rule of ours it is, if it is one.
type listed struct {
	spec []string
	line string
	r    rule
	ours bool
}

// parseListed reads a line of `iptables -S chain`. It returns false for
// lines that are not rules of chain (the -N and -P lines).
func parseListed(chain, line string) (listed, bool) {
	toks, err := splitRule(line)
	if err != nil || len(toks) < 2 || toks[0] != "-A" || toks[1] != chain {
		return listed{}, false
	}
	l := listed{spec: toks[2:], line: line}
	l.r, l.ours = parseRule(l.spec)
	return l, true
}

// parseRule recognises the rule specifications webknock writes, the
// ownership marker included, in the form `iptables -S` prints them (with
// the implicit `-m tcp` and a quoted comment, already unquoted here) and in
// the form we pass to iptables. Anything with more, less or other options
// is not ours.
func parseRule(spec []string) (rule, bool) {
	if len(spec) == 4 && spec[0] == "-m" && spec[1] == "comment" && spec[2] == "--comment" {
		if owner, ok := strings.CutPrefix(spec[3], commentOwner); ok && (owner == "" || len(owner) > 1 && owner[0] == ':') {
			return rule{kind: kindMarker, owner: strings.TrimPrefix(owner, ":")}, true
		}
	}
	if len(spec) == 11 && spec[0] == "-m" && spec[1] == "set" && spec[2] == "--match-set" && spec[4] == "src,dst" &&
		spec[5] == "-m" && spec[6] == "comment" && spec[7] == "--comment" && spec[8] == commentGrants &&
		spec[9] == "-j" && spec[10] == "ACCEPT" {
		return rule{kind: kindSet, set: spec[3]}, true
	}
	var r rule
	s := spec
	take := func(opt string) (string, bool) {
		if len(s) < 2 || s[0] != opt {
			return "", false
		}
		v := s[1]
		s = s[2:]
		return v, true
	}
	if v, ok := take("-s"); ok {
		p, err := netip.ParsePrefix(v)
		if err != nil || p != p.Masked() {
			return rule{}, false
		}
		r.src = p
	}
	proto, ok := take("-p")
	if !ok || (proto != "tcp" && proto != "udp") {
		return rule{}, false
	}
	if len(s) >= 2 && s[0] == "-m" && s[1] == proto {
		s = s[2:]
	}
	v, ok := take("--dport")
	if !ok {
		return rule{}, false
	}
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != v {
		return rule{}, false
	}
	r.port = Port{Proto: proto, Number: uint16(n)}

	// The resets' flag tests: iptables prints them with the port's match.
	var flags string
	if len(s) >= 4 && s[0] == "!" && s[1] == "--tcp-flags" && proto == "tcp" {
		flags = s[2] + " " + s[3]
		s = s[4:]
	}
	var datestop string
	if len(s) >= 2 && s[0] == "-m" && s[1] == "time" {
		s = s[2:]
		if datestop, ok = take("--datestop"); !ok {
			return rule{}, false
		}
	}
	conntrack, ctdir := false, false
	switch {
	case len(s) >= 4 && s[0] == "-m" && s[1] == "conntrack" && s[2] == "--ctstate" && s[3] == "NEW":
		conntrack = true
		s = s[4:]
	case len(s) >= 4 && s[0] == "-m" && s[1] == "conntrack" && s[2] == "--ctdir" && s[3] == "REPLY":
		ctdir = true
		s = s[4:]
	}
	if len(s) < 2 || s[0] != "-m" || s[1] != "comment" {
		return rule{}, false
	}
	s = s[2:]
	comment, ok := take("--comment")
	if !ok {
		return rule{}, false
	}
	target, ok := take("-j")
	if !ok {
		return rule{}, false
	}
	if target == "REJECT" {
		if v, ok := take("--reject-with"); !ok || v != "tcp-reset" {
			return rule{}, false
		}
		target += " tcp-reset"
	}
	if len(s) != 0 {
		return rule{}, false
	}

	plain := datestop == "" && flags == "" && !ctdir
	switch {
	case comment == commentAllow:
		r.kind = kindAllow
		if !r.src.IsValid() || !plain || conntrack || target != "ACCEPT" {
			return rule{}, false
		}
	case comment == commentProtect:
		r.kind = kindProtect
		if r.src.IsValid() || !plain || !conntrack || target != "DROP" {
			return rule{}, false
		}
	case comment == commentReset && conntrack && flags == "FIN,SYN,RST,ACK SYN":
		r.kind = kindResetNew
		if r.src.IsValid() || datestop != "" || target != "REJECT tcp-reset" {
			return rule{}, false
		}
	case comment == commentReset && ctdir && flags == "RST RST":
		r.kind = kindResetReply
		if r.src.IsValid() || datestop != "" || target != "REJECT tcp-reset" {
			return rule{}, false
		}
	default:
		seq, until, ok := parseGrantComment(comment)
		if !ok || !r.src.IsValid() || checkBits(r.src.Addr(), grantBits(r.src)) != nil || flags != "" || ctdir || conntrack ||
			target != "ACCEPT" || datestop != time.Unix(until, 0).UTC().Format(datestopLayout) {
			return rule{}, false
		}
		r.kind, r.seq, r.until = kindGrant, seq, until
	}
	return r, true
}

// parseGrantComment reads webknock:SEQUENCE:UNTIL.
func parseGrantComment(c string) (seq string, until int64, ok bool) {
	rest, found := strings.CutPrefix(c, commentPrefix)
	if !found {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, ':')
	if i < 0 {
		return "", 0, false
	}
	seq = rest[:i]
	until, err := strconv.ParseInt(rest[i+1:], 10, 64)
	if err != nil || !seqRe.MatchString(seq) || until <= 0 || until > maxUntil.Unix() ||
		strconv.FormatInt(until, 10) != rest[i+1:] {
		return "", 0, false
	}
	return seq, until, true
}

// splitRule splits a line of `iptables -S` into its words. iptables puts
// double quotes around strings such as comments and escapes `"` and `\`
// inside them with a backslash.
func splitRule(line string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		in    bool // a word is being read
		quote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case quote && c == '"':
			quote = false
		case quote:
			cur.WriteByte(c)
		case c == '"':
			quote, in = true, true
		case c == ' ' || c == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(c)
			in = true
		}
	}
	if quote {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if in {
		words = append(words, cur.String())
	}
	return words, nil
}
