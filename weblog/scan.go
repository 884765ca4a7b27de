package weblog

import (
	"bytes"
	"strings"
	"time"
)

// unescape decodes a logged value. nginx writes '"', '\' and bytes outside
// printable ASCII as \xHH; Apache writes \" \\ \b \n \r \t \v and \xhh.
// Neither ever escapes another printable ASCII byte, so such an escape is a
// line no web server wrote and is refused: decoded text never holds a
// printable byte that the raw line did not hold in the same place.
func unescape(raw []byte) (string, bool) {
	i := bytes.IndexByte(raw, '\\')
	if i < 0 {
		return string(raw), true
	}
	var b strings.Builder
	b.Grow(len(raw))
	b.Write(raw[:i])
	for ; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(raw) {
			return "", false
		}
		i++
		switch raw[i] {
		case '"', '\\':
			b.WriteByte(raw[i])
		case 'b':
			b.WriteByte('\b')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'v':
			b.WriteByte('\v')
		case 'x':
			if i+2 >= len(raw) {
				return "", false
			}
			h, ok1 := unhex(raw[i+1])
			l, ok2 := unhex(raw[i+2])
			v := h<<4 | l
			if !ok1 || !ok2 || (v >= 0x20 && v < 0x7f && v != '"' && v != '\\') {
				return "", false
			}
			b.WriteByte(v)
			i += 2
		default:
			return "", false
		}
	}
	return b.String(), true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// quotedEnd returns the index of the '"' that closes a quoted field whose
// text starts at s[0], skipping escaped quotes; -1 if there is none.
func quotedEnd(s []byte) int {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// timeLocalLen is the length of "02/Jan/2006:15:04:05 -0700".
const timeLocalLen = 26

var months = [...]string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}

// zoneCache keeps the last fixed zones, so parsing a line does not allocate
// one: a log has one or two offsets (daylight saving).
type zoneCache struct {
	offs  [2]int
	zones [2]*time.Location
	next  int
}

func (z *zoneCache) get(off int) *time.Location {
	for i, l := range z.zones {
		if l != nil && z.offs[i] == off {
			return l
		}
	}
	l := time.FixedZone("", off)
	z.offs[z.next], z.zones[z.next] = off, l
	z.next = (z.next + 1) % len(z.zones)
	return l
}

// parseTimeLocal parses nginx's $time_local and Apache's %t without the
// brackets: "02/Jan/2006:15:04:05 -0700".
func parseTimeLocal(s []byte, zc *zoneCache) (time.Time, bool) {
	if len(s) != timeLocalLen || s[2] != '/' || s[6] != '/' || s[11] != ':' ||
		s[14] != ':' || s[17] != ':' || s[20] != ' ' {
		return time.Time{}, false
	}
	day, ok1 := digits(s[0:2])
	year, ok2 := digits(s[7:11])
	hour, ok3 := digits(s[12:14])
	minute, ok4 := digits(s[15:17])
	sec, ok5 := digits(s[18:20])
	zh, ok6 := digits(s[22:24])
	zm, ok7 := digits(s[24:26])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return time.Time{}, false
	}
	month := 0
	for i, m := range months {
		if string(s[3:6]) == m {
			month = i + 1
			break
		}
	}
	if month == 0 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 60 || zh > 23 || zm > 59 {
		return time.Time{}, false
	}
	off := zh*3600 + zm*60
	switch s[21] {
	case '-':
		off = -off
	case '+':
	default:
		return time.Time{}, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, 0, zc.get(off)), true
}

func daysIn(month, year int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func digits(s []byte) (int, bool) {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, len(s) > 0
}

// number parses a decimal field of at most 18 digits, or "-" as dash.
func number(s []byte, dash int64) (int64, bool) {
	if len(s) == 1 && s[0] == '-' {
		return dash, true
	}
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	n, ok := digits(s)
	return int64(n), ok
}
