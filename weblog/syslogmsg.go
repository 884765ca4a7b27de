package weblog

// Syslog messages: the access-log line in one, and messages in a stream.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"

	syslog "github.com/leodido/go-syslog/v4"
	"github.com/leodido/go-syslog/v4/rfc3164"
	"github.com/leodido/go-syslog/v4/rfc5424"
)

// syslogParser finds the body of a message. Its go-syslog machines are
// not safe for concurrent use: each reading goroutine has its own.
type syslogParser struct {
	m3164, m5424 syslog.Machine
}

func newSyslogParser() *syslogParser {
	return &syslogParser{
		m3164: rfc3164.NewMachine(
			rfc3164.WithYear(rfc3164.CurrentYear{}),
			// rsyslog forwards with RFC 3339 stamps or zero-padded days.
			rfc3164.WithRFC3339(),
			rfc3164.WithLenientDay(),
		),
		m5424: rfc5424.NewMachine(),
	}
}

// syslogParsers serves SyslogBody, which any goroutine may call.
var syslogParsers = sync.Pool{New: func() any { return newSyslogParser() }}

// SyslogBody returns the body of one syslog message: the MSG part, which
// is the access-log line. RFC 5424 is recognised by "<PRI>1 "; anything
// else is RFC 3164, whose body is what follows "TAG: " or "TAG[PID]: ",
// with or without a HOSTNAME (nginx's nohostname, logger -u). One
// trailing "\n" or "\r\n" is removed; any other line break or a NUL is an
// error, so a message never becomes two lines. A 5424 body's leading
// UTF-8 BOM is removed. The body is a slice of msg. An error means the
// header does not parse, or there is no tag or no body: nothing from such
// a message may be taken as a line.
func SyslogBody(msg []byte) ([]byte, error) {
	p := syslogParsers.Get().(*syslogParser)
	defer syslogParsers.Put(p)
	return p.body(msg)
}

var errEmptyBody = errors.New("syslog message has no body")

func (p *syslogParser) body(msg []byte) ([]byte, error) {
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
		if n > 1 && msg[n-2] == '\r' {
			msg = msg[:n-2]
		}
	}
	for _, c := range []byte{'\n', '\r', 0} {
		if i := bytes.IndexByte(msg, c); i >= 0 {
			return nil, fmt.Errorf("syslog message has a line break or NUL at byte %d", i)
		}
	}
	if is5424(msg) {
		m, err := p.m5424.Parse(msg)
		if err != nil {
			return nil, fmt.Errorf("rfc5424 header: %w", err)
		}
		sm, ok := m.(*rfc5424.SyslogMessage)
		if !ok {
			return nil, errEmptyBody
		}
		body, ok := tail(msg, sm.Message)
		if !ok {
			return nil, errEmptyBody
		}
		body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
		if len(body) == 0 {
			return nil, errEmptyBody
		}
		return body, nil
	}
	m, err := p.m3164.Parse(msg)
	if err != nil {
		return nil, fmt.Errorf("rfc3164 header: %w", err)
	}
	sm, ok := m.(*rfc3164.SyslogMessage)
	if !ok || sm.Appname == nil {
		// A first word of the line would be taken for a host name.
		return nil, errors.New("rfc3164 header: no TAG: before the message")
	}
	body, ok := tail(msg, sm.Message)
	if !ok || len(body) == 0 {
		return nil, errEmptyBody
	}
	// go-syslog's grammar makes the tag optional, and its fields can come
	// from different readings of an ambiguous message ("host tag: " with
	// an empty body yields the tag and "tag: " as the message): the body
	// counts only if " TAG[PID]: " is right before it.
	head := msg[:len(msg)-len(body)]
	head, ok = cutSuffix(head, ": ")
	if ok && sm.ProcID != nil {
		head, ok = cutSuffix(head, "]")
		if ok {
			head, ok = cutSuffix(head, *sm.ProcID)
		}
		if ok {
			head, ok = cutSuffix(head, "[")
		}
	}
	if ok {
		head, ok = cutSuffix(head, *sm.Appname)
	}
	if !ok || len(head) == 0 || head[len(head)-1] != ' ' {
		return nil, errors.New("rfc3164 header: the message does not follow its TAG: ")
	}
	return body, nil
}

// is5424 reports whether msg starts with "<PRI>1 ".
func is5424(msg []byte) bool {
	if len(msg) < 5 || msg[0] != '<' {
		return false
	}
	i := 1
	for i < len(msg) && i <= 3 && msg[i] >= '0' && msg[i] <= '9' {
		i++
	}
	return i > 1 && len(msg) >= i+3 && msg[i] == '>' && msg[i+1] == '1' && msg[i+2] == ' '
}

// tail returns the end of msg that equals *s, if it does: go-syslog hands
// the message out as a copy, the body is taken from msg itself.
func tail(msg []byte, s *string) ([]byte, bool) {
	if s == nil || len(*s) > len(msg) {
		return nil, false
	}
	b := msg[len(msg)-len(*s):]
	return b, string(b) == *s
}

func cutSuffix(b []byte, s string) ([]byte, bool) {
	if len(s) > len(b) || string(b[len(b)-len(s):]) != s {
		return b, false
	}
	return b[:len(b)-len(s)], true
}

// Why ScanSyslog skipped a frame or stopped (SyslogFrameError.Err).
var (
	// ErrOversized: a message longer than the limit; it was not read into
	// memory and not parsed.
	ErrOversized = errors.New("syslog message over the size limit")
	// ErrTruncated: the stream ended inside a message, which is dropped.
	ErrTruncated = errors.New("syslog stream ended inside a message")
)

// SyslogFrameError is a message of a stream that was not delivered whole.
type SyslogFrameError struct {
	Offset int64 // of the frame's first byte in the stream
	// Size is the declared length (octet counting), or the line's length
	// (newline framing): max+1 for one found over max before its end; for
	// ErrTruncated, the bytes the stream had of an unfinished line.
	Size  int64
	Err   error // ErrOversized or ErrTruncated
	Cause error // ErrTruncated: the read error that ended the stream; nil at its end
}

func (e *SyslogFrameError) Error() string {
	s := fmt.Sprintf("syslog frame at byte %d (%d bytes): %v", e.Offset, e.Size, e.Err)
	if e.Cause != nil {
		s += ": " + e.Cause.Error()
	}
	return s
}

func (e *SyslogFrameError) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

// maxLenDigits is the longest octet count read as one; a longer run of
// digits is the start of a newline-framed message.
const maxLenDigits = 20

// ScanSyslog reads the syslog messages of a byte stream framed as TCP
// syslog frames them (RFC 6587; a capture of such a stream too), and calls
// fn with each, in order, without its framing. A frame that starts with a digit 1-9 followed by up to 19
// more and a space is octet counted (RFC 6587 "LEN SP MSG"); any other
// is one line, up to "\n" (a "\r" before it is removed too); both may mix.
// Empty lines are skipped. msg is only valid during the call.
//
// A message longer than max (DefaultMaxMessage if max <= 0) is not read
// into memory: fn is called with a nil msg and a *SyslogFrameError
// wrapping ErrOversized, and scanning goes on after the frame (an octet
// count is trusted: a huge one swallows the rest of the stream). Memory
// is about max, whatever the stream declares.
//
// ScanSyslog returns what fn returns if not nil; at the end of r nil, or,
// when r ends inside a frame, a *SyslogFrameError wrapping ErrTruncated
// (and the read error, if it was not io.EOF); another read error as it is.
func ScanSyslog(r io.Reader, max int, fn func(msg []byte, skipped error) error) error {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	// Room for a whole frame: the count, its space, max bytes and "\r\n".
	f := &frameReader{r: r, buf: make([]byte, maxLenDigits+1+max+2)}
	for {
		if f.i == f.j && !f.fill() {
			if f.err == io.EOF {
				return nil
			}
			return f.err
		}
		var err error
		if n, plen, ok := f.octetCount(); ok {
			err = f.counted(n, plen, max, fn)
		} else if f.err == nil || f.i < f.j {
			err = f.line(max, fn)
		}
		if err != nil {
			return err
		}
	}
}

// frameReader holds the unread part of a stream.
type frameReader struct {
	r    io.Reader
	buf  []byte
	i, j int   // buf[i:j] is read and not yet consumed
	off  int64 // stream offset of buf[i]
	err  error // r's, once it returned one
}

// fill reads more after buf[i:j], moving that to the front; false means r
// has no more (f.err says why).
func (f *frameReader) fill() bool {
	if f.err != nil {
		return false
	}
	if f.i > 0 {
		f.j = copy(f.buf, f.buf[f.i:f.j])
		f.i = 0
	}
	for range 100 {
		n, err := f.r.Read(f.buf[f.j:])
		f.j += n
		if err != nil {
			f.err = err
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	f.err = io.ErrNoProgress
	return false
}

func (f *frameReader) consume(n int) {
	f.i += n
	f.off += int64(n)
}

// truncated is the error of a stream that ended inside the frame at off.
func (f *frameReader) truncated(off, size int64) error {
	e := &SyslogFrameError{Offset: off, Size: size, Err: ErrTruncated}
	if f.err != io.EOF {
		e.Cause = f.err
	}
	return e
}

// octetCount reads the "LEN SP" at buf[i], if the frame has one: the
// length (saturated), the prefix's bytes.
func (f *frameReader) octetCount() (n int64, plen int, ok bool) {
	if c := f.buf[f.i]; c < '1' || c > '9' {
		return 0, 0, false
	}
	for k := 0; ; k++ {
		if f.i+k == f.j && !f.fill() {
			return 0, 0, false // a line of digits, ended by the stream
		}
		c := f.buf[f.i+k]
		switch {
		case c == ' ' && k > 0:
			return n, k + 1, true
		case c < '0' || c > '9' || k == maxLenDigits:
			return 0, 0, false
		}
		if n > (math.MaxInt64-9)/10 {
			n = math.MaxInt64
		} else {
			n = n*10 + int64(c-'0')
		}
	}
}

// counted delivers or skips an octet-counted frame of n bytes after its
// prefix of plen bytes.
func (f *frameReader) counted(n int64, plen, max int, fn func([]byte, error) error) error {
	start := f.off
	f.consume(plen)
	if n <= int64(max) {
		for f.j-f.i < int(n) {
			if !f.fill() {
				return f.truncated(start, n)
			}
		}
		msg := f.buf[f.i : f.i+int(n)]
		f.consume(int(n))
		return fn(msg, nil)
	}
	if err := fn(nil, &SyslogFrameError{Offset: start, Size: n, Err: ErrOversized}); err != nil {
		return err
	}
	for left := n; left > 0; {
		if f.i == f.j && !f.fill() {
			return f.truncated(start, n)
		}
		k := int(min(left, int64(f.j-f.i)))
		f.consume(k)
		left -= int64(k)
	}
	return nil
}

// line delivers or skips a newline-framed message.
func (f *frameReader) line(max int, fn func([]byte, error) error) error {
	start := f.off
	// A newline is looked for in the first max+2 bytes only ("\r\n"), so
	// that what is oversized does not depend on how reads split the stream.
	for scanned := 0; ; {
		if p := bytes.IndexByte(f.buf[f.i+scanned:min(f.j, f.i+max+2)], '\n'); p >= 0 {
			msg := f.buf[f.i : f.i+scanned+p]
			f.consume(len(msg) + 1)
			msg = bytes.TrimSuffix(msg, []byte{'\r'})
			switch {
			case len(msg) == 0:
				return nil
			case len(msg) > max:
				return fn(nil, &SyslogFrameError{Offset: start, Size: int64(len(msg)), Err: ErrOversized})
			}
			return fn(msg, nil)
		}
		scanned = f.j - f.i
		if scanned >= max+2 {
			break // no room for more: oversized
		}
		if !f.fill() {
			return f.truncated(start, int64(f.j-f.i))
		}
	}
	if err := fn(nil, &SyslogFrameError{Offset: start, Size: int64(max + 1), Err: ErrOversized}); err != nil {
		return err
	}
	for {
		if p := bytes.IndexByte(f.buf[f.i:f.j], '\n'); p >= 0 {
			f.consume(p + 1)
			return nil
		}
		f.consume(f.j - f.i)
		if !f.fill() {
			return f.truncated(start, f.off-start)
		}
	}
}
