package weblog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzSyslogBody: no message makes SyslogBody panic, and a body it returns
// is never empty, never holds a line break or NUL, and is the end of the
// message (less one trailing newline): it cannot come from the header.
func FuzzSyslogBody(f *testing.F) {
	for _, c := range syslogBodyCases {
		f.Add([]byte(c.msg))
	}
	for _, s := range readSyslogSamples(f, "testdata/syslog/captured.txt") {
		f.Add(s.msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		body, err := SyslogBody(msg)
		if err != nil {
			if body != nil {
				t.Fatalf("SyslogBody(%q) = %q and %v", msg, body, err)
			}
			return
		}
		trimmed := bytes.TrimSuffix(bytes.TrimSuffix(msg, []byte("\n")), []byte("\r"))
		switch {
		case len(body) == 0:
			t.Fatalf("SyslogBody(%q): empty body", msg)
		case bytes.ContainsAny(body, "\n\r\x00"):
			t.Fatalf("SyslogBody(%q) = %q: a line break or NUL", msg, body)
		case !bytes.HasSuffix(trimmed, body):
			t.Fatalf("SyslogBody(%q) = %q: not the end of the message", msg, body)
		}
		again, err := SyslogBody(msg)
		if err != nil || !bytes.Equal(again, body) {
			t.Fatalf("SyslogBody(%q) = %q, then %q, %v", msg, body, again, err)
		}
	})
}

// FuzzScanSyslog: no stream makes ScanSyslog panic or deliver a message
// over max, and what it reports does not depend on how reads split the
// stream.
func FuzzScanSyslog(f *testing.F) {
	for _, c := range []string{
		"5 hello3 abc", "hello\nworld\r\n", "<1>a\n3 xyz<2>b\n2 cd", "123abc\n4 next",
		"41 " + strings.Repeat("x", 41) + "2 ok", strings.Repeat("y", 500) + "\n2 ok",
		"99999999999999999999 x", "999999999999999999999 x\n", "2147483648 xx", "1234", "\n\r\n",
	} {
		f.Add([]byte(c), uint16(32))
	}
	for _, s := range readSyslogSamples(f, "testdata/syslog/captured.txt") {
		f.Add([]byte(octet(string(s.msg))+string(s.msg)+"\n"), uint16(4096))
	}
	f.Fuzz(func(t *testing.T, data []byte, m uint16) {
		max := int(m%1024) + 1
		run := func(r io.Reader) []string {
			var got []string
			err := ScanSyslog(r, max, func(msg []byte, skipped error) error {
				if skipped != nil {
					var fe *SyslogFrameError
					if !errors.As(skipped, &fe) || !errors.Is(skipped, ErrOversized) || fe.Size <= int64(max) {
						t.Fatalf("skipped: %v", skipped)
					}
					got = append(got, fmt.Sprintf("oversized %d %d", fe.Offset, fe.Size))
					return nil
				}
				if len(msg) > max || len(msg) == 0 {
					t.Fatalf("message of %d bytes, max %d", len(msg), max)
				}
				got = append(got, "msg "+string(msg))
				return nil
			})
			if err != nil {
				var fe *SyslogFrameError
				if !errors.As(err, &fe) || !errors.Is(err, ErrTruncated) {
					t.Fatalf("ScanSyslog: %v", err)
				}
				got = append(got, fmt.Sprintf("truncated %d %d", fe.Offset, fe.Size))
			}
			return got
		}
		whole := run(bytes.NewReader(data))
		bytewise := run(iotest.OneByteReader(bytes.NewReader(data)))
		if !equalStrings(whole, bytewise) {
			t.Fatalf("ScanSyslog(%q, %d): whole %q, byte at a time %q", data, max, whole, bytewise)
		}
	})
}
