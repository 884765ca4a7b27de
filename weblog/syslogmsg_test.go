package weblog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/webknock/webknock/internal/golden"
)

const nginxLine = `127.0.0.1 - - [02/Dec/2026:12:31:49 +0000] "GET /k/7f3a9c HTTP/1.1" 404 153 "-" "curl/7.88.1"`

// syslogBodyCases are messages and their bodies; want "" means an error.
var syslogBodyCases = []struct {
	name, msg, want string
}{
	{"nginx nohostname", "<190>Dec  2 12:31:49 nginx: " + nginxLine, nginxLine},
	{"nginx hostname", "<190>Dec  2 12:31:49 web1 nginx: " + nginxLine, nginxLine},
	{"nginx tag", "<190>Dec 12 12:31:49 web1 web_1: " + nginxLine, nginxLine},
	{"logger -u", "<13>Dec  2 12:31:40 root: " + nginxLine, nginxLine},
	{"logger pid", "<13>Dec  2 12:31:40 root[4242]: " + nginxLine, nginxLine},
	{"host and pid", "<13>Dec  2 12:31:40 vm root[4242]: " + nginxLine, nginxLine},
	{"trailing newline", "<13>Dec  2 12:31:40 root: " + nginxLine + "\n", nginxLine},
	{"trailing crlf", "<13>Dec  2 12:31:40 root: " + nginxLine + "\r\n", nginxLine},
	{"colons in body", "<13>Dec  2 12:31:40 a: b: c", "b: c"},
	{"rfc3339 stamp", "<13>2026-12-02T12:31:40.123+01:00 vm root: " + nginxLine, nginxLine},
	{"zero-padded day", "<13>Dec 02 12:31:40 vm root: " + nginxLine, nginxLine},
	{"rfc5424", "<13>1 2026-12-02T12:31:40.646816+00:00 vm root - - [timeQuality tzKnown=\"1\" isSynced=\"0\"] " + nginxLine, nginxLine},
	{"rfc5424 sd", `<13>1 2026-12-02T12:31:40.648298+00:00 vm root - - [timeQuality tzKnown="1"][zoo@123 tiger="hungry"] ` + nginxLine, nginxLine},
	{"rfc5424 nil fields", "<165>1 - - - - - - " + nginxLine, nginxLine},
	{"rfc5424 bom", "<165>1 - - - - - - \xef\xbb\xbf" + nginxLine, nginxLine},
	{"rfc5424 newline", "<165>1 - - - - - - " + nginxLine + "\n", nginxLine},

	{"two lines", "<13>Dec  2 12:31:40 root: line one\nline two", ""},
	{"two trailing newlines", "<13>Dec  2 12:31:40 root: " + nginxLine + "\n\n", ""},
	{"cr inside", "<13>Dec  2 12:31:40 root: a\rb", ""},
	{"nul", "<13>Dec  2 12:31:40 root: a\x00b", ""},
	{"rfc5424 two lines", "<165>1 - - - - - - a\nb", ""},
	{"no tag", "<13>Dec  2 12:31:40 " + nginxLine, ""},
	{"empty body", "<13>Dec  2 12:31:40 root: ", ""},
	{"empty body with host", "<13>Dec  2 12:31:40 vm root: ", ""},
	{"tag only", "<13>Dec  2 12:31:40 root:", ""},
	{"rfc5424 no msg", "<165>1 - - - - - -", ""},
	{"rfc5424 empty msg", "<165>1 - - - - - - ", ""},
	{"rfc5424 bom only", "<165>1 - - - - - - \xef\xbb\xbf", ""},
	{"rfc5424 bad version stamp", "<165>1 2026-13-45T99:00:00Z - - - - - x", ""},
	{"no pri", "Dec  2 12:31:40 root: x", ""},
	{"bad pri", "<999>Dec  2 12:31:40 root: x", ""},
	{"bad stamp", "<13>Foo  2 12:31:40 root: x", ""},
	{"control char", "<13>Dec  2 12:31:40 root: a\x01b", ""},
	{"empty", "", ""},
	{"newline", "\n", ""},
	{"garbage", "hello world", ""},
	{"pri only", "<13>", ""},
}

func TestSyslogBody(t *testing.T) {
	for _, c := range syslogBodyCases {
		t.Run(c.name, func(t *testing.T) {
			got, err := SyslogBody([]byte(c.msg))
			switch {
			case c.want == "" && err == nil:
				t.Errorf("SyslogBody(%q) = %q, want an error", c.msg, got)
			case c.want != "" && err != nil:
				t.Errorf("SyslogBody(%q): %v, want %q", c.msg, err, c.want)
			case string(got) != c.want:
				t.Errorf("SyslogBody(%q) = %q, want %q", c.msg, got, c.want)
			}
		})
	}
}

func TestSyslogBodyNoAllocs(t *testing.T) {
	msg := []byte("<190>Dec  2 12:31:49 nginx: " + nginxLine)
	p := newSyslogParser()
	// go-syslog's own allocations (its message struct and field copies).
	const goSyslog = 6
	if n := testing.AllocsPerRun(100, func() { p.body(msg) }); n > goSyslog {
		t.Errorf("body allocates %v times per message, want at most go-syslog's %d", n, goSyslog)
	}
}

// TestSyslogBodyCaptured runs SyslogBody over the messages real nginx and
// logger sent (testdata/syslog/README), against captured.golden.
func TestSyslogBodyCaptured(t *testing.T) {
	samples := readSyslogSamples(t, "testdata/syslog/captured.txt")
	if len(samples) == 0 {
		t.Fatal("no samples")
	}
	var out bytes.Buffer
	for _, s := range samples {
		body, err := SyslogBody(s.msg)
		if err != nil {
			fmt.Fprintf(&out, "%s\terror: %v\n", s.name, err)
			continue
		}
		if bytes.IndexByte(body, '\n') >= 0 {
			t.Errorf("%s: body %q has a newline", s.name, body)
		}
		fmt.Fprintf(&out, "%s\t%s\n", s.name, body)
	}
	golden.Check(t, "testdata/syslog/captured.golden", out.Bytes())
}

type syslogSample struct {
	name string
	msg  []byte
}

// readSyslogSamples reads "NAME<TAB>QUOTED-MESSAGE" lines.
func readSyslogSamples(t testing.TB, path string) []syslogSample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []syslogSample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, q, ok := strings.Cut(line, "\t")
		msg, err := strconv.Unquote(q)
		if !ok || err != nil {
			t.Fatalf("%s: bad line %q", path, line)
		}
		out = append(out, syslogSample{name, []byte(msg)})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// scanSyslogAll returns what ScanSyslog reported, as text: "msg:…", "oversized@OFF/SIZE".
func scanSyslogAll(t *testing.T, r io.Reader, max int) ([]string, error) {
	t.Helper()
	var got []string
	err := ScanSyslog(r, max, func(msg []byte, skipped error) error {
		if skipped != nil {
			var fe *SyslogFrameError
			if !errors.As(skipped, &fe) || !errors.Is(skipped, ErrOversized) || msg != nil {
				t.Errorf("skipped %v (msg %q), want a *SyslogFrameError wrapping ErrOversized and no msg", skipped, msg)
			}
			got = append(got, fmt.Sprintf("oversized@%d/%d", fe.Offset, fe.Size))
			return nil
		}
		if len(msg) > max {
			t.Errorf("message of %d bytes, over max %d", len(msg), max)
		}
		got = append(got, "msg:"+string(msg))
		return nil
	})
	return got, err
}

func TestScanSyslog(t *testing.T) {
	long := strings.Repeat("x", 40)
	cases := []struct {
		name, in string
		max      int
		want     []string
		err      error // wrapped by the result; nil: none
	}{
		{"empty", "", 32, nil, nil},
		{"octet counting", "5 hello3 abc", 32, []string{"msg:hello", "msg:abc"}, nil},
		{"octet counting keeps newlines", "5 a\nb\r\n", 32, []string{"msg:a\nb\r\n"}, nil},
		{"newline framing", "hello\nworld\r\n<13>x\n", 32, []string{"msg:hello", "msg:world", "msg:<13>x"}, nil},
		{"empty lines skipped", "\n\r\na\n\n", 32, []string{"msg:a"}, nil},
		{"mixed", "<1>a\n3 xyz<2>b\n2 cd", 32, []string{"msg:<1>a", "msg:xyz", "msg:<2>b", "msg:cd"}, nil},
		{"digits without space are a line", "123abc\n4 next", 32, []string{"msg:123abc", "msg:next"}, nil},
		{"leading zero is a line", "05 hello\n", 32, []string{"msg:05 hello"}, nil},
		{"exactly max", "4 abcd" + "abcd\n", 4, []string{"msg:abcd", "msg:abcd"}, nil},
		{"oversized counted frame skipped", "41 " + long + "!" + "2 ok", 32, []string{"oversized@0/41", "msg:ok"}, nil},
		{"oversized line skipped", long + "\n<1>ok\n", 32, []string{"oversized@0/33", "msg:<1>ok"}, nil},
		{"oversized line longer than the buffer", strings.Repeat("y", 500) + "\n2 ok", 32, []string{"oversized@0/33", "msg:ok"}, nil},
		{"oversized line ends the stream", strings.Repeat("y", 500), 32, []string{"oversized@0/33"}, ErrTruncated},
		{"line max with cr", "abcd\r\n", 4, []string{"msg:abcd"}, nil},
		{"truncated counted frame", "2 ok10 short", 32, []string{"msg:ok"}, ErrTruncated},
		{"truncated line", "<1>a\n<2>no newline", 32, []string{"msg:<1>a"}, ErrTruncated},
		{"truncated prefix", "1234", 32, nil, ErrTruncated},
		{"20-digit length", "99999999999999999999 " + long + "\n2 ok", 32, []string{"oversized@0/9223372036854775807"}, ErrTruncated},
		{"21 digits are a line", "999999999999999999999 x\n2 ok", 64, []string{"msg:999999999999999999999 x", "msg:ok"}, nil},
		{"huge declared length", "2147483648 " + long, 32, []string{"oversized@0/2147483648"}, ErrTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, rd := range []struct {
				name string
				r    io.Reader
			}{
				{"whole", strings.NewReader(c.in)},
				{"byte at a time", iotest.OneByteReader(strings.NewReader(c.in))},
				{"data with EOF", iotest.DataErrReader(strings.NewReader(c.in))},
			} {
				got, err := scanSyslogAll(t, rd.r, c.max)
				if !slices.Equal(got, c.want) {
					t.Errorf("%s: ScanSyslog(%q) = %q, want %q", rd.name, c.in, got, c.want)
				}
				if c.err == nil && err != nil || c.err != nil && !errors.Is(err, c.err) {
					t.Errorf("%s: ScanSyslog(%q) error %v, want %v", rd.name, c.in, err, c.err)
				}
			}
		})
	}
}

func TestScanSyslogErrors(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	err := ScanSyslog(strings.NewReader("1 a1 b1 c"), 8, func([]byte, error) error {
		n++
		return stop
	})
	if err != stop || n != 1 {
		t.Errorf("fn's error: got %v after %d calls, want %v after 1", err, n, stop)
	}

	broken := errors.New("connection reset")
	err = ScanSyslog(io.MultiReader(strings.NewReader("1 a5 bc"), iotest.ErrReader(broken)), 8, func([]byte, error) error { return nil })
	var fe *SyslogFrameError
	if !errors.Is(err, ErrTruncated) || !errors.Is(err, broken) || !errors.As(err, &fe) || fe.Offset != 3 || fe.Size != 5 {
		t.Errorf("read error inside a frame: %v, want ErrTruncated at 3 (5 bytes) wrapping %v", err, broken)
	}
	err = ScanSyslog(io.MultiReader(strings.NewReader("1 a"), iotest.ErrReader(broken)), 8, func([]byte, error) error { return nil })
	if err != broken {
		t.Errorf("read error between frames: %v, want %v", err, broken)
	}
}

// TestScanSyslogMemory: a declared length never becomes an allocation.
func TestScanSyslogMemory(t *testing.T) {
	in := []byte("99999999999 " + strings.Repeat("z", 1<<20))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ScanSyslog(bytes.NewReader(in), 1024, func([]byte, error) error { return nil })
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 8<<10 {
		t.Errorf("scanning a 1 MiB frame declared 99999999999 bytes long allocated %d bytes, want about the 1 KiB limit", n)
	}
}
