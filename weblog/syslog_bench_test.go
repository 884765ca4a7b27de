package weblog

// Throughput of the syslog input over real loopback sockets, with a
// consumer that only acknowledges. Every message sent is counted and every
// line delivered: what does not arrive is reported as "lost", never hidden
// by waiting for the listener. Run with a fixed count, e.g.
//
//	go test ./weblog -run '^$' -bench BenchmarkSyslog -benchtime 1000000x
//
// The sender is another process, as a web server is. The paced runs send
// at a steady 200,000 messages/s; the unpaced ones as fast as one sender
// can.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const benchRate = 200_000

// benchMessage is a nginx datagram of about 200 bytes (nohostname, combined).
func benchMessage(i int) []byte {
	return fmt.Appendf(nil, `<190>Dec  2 12:31:49 nginx: 203.0.113.%d - - [02/Dec/2026:12:31:49 +0000] "GET /k/7f3a9c?n=%07d HTTP/1.1" 404 153 "-" "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"`,
		i%250+1, i)
}

// senderEnv makes the test binary a sender (TestSyslogBenchSender):
// "NETWORK ADDRESS COUNT RATE BLOCKING".
const senderEnv = "WK_SYSLOG_BENCH_SENDER"

// TestSyslogBenchSender is the benchmarks' sender, run as a process of its
// own as a web server is: in the benchmark's process it would compete with
// the listener for the Go scheduler, which a web server does not.
func TestSyslogBenchSender(t *testing.T) {
	spec := os.Getenv(senderEnv)
	if spec == "" {
		t.Skip("skipping: the benchmarks' sender process, run by them")
	}
	var network, addr string
	var n, rate int
	var blocking bool
	if _, err := fmt.Sscan(spec, &network, &addr, &n, &rate, &blocking); err != nil {
		t.Fatal(err)
	}
	dropped, err := send(network, addr, n, rate, blocking)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("SENDER dropped=%d\n", dropped)
}

// send sends n messages to addr: over unixgram without waiting for room,
// as nginx does (a full socket drops the message), unless blocking, as
// logger does; udp as nginx does; tcp octet counted in buffered chunks, as
// a relay (rsyslog) does. It paces at rate per second, 0 for unpaced.
func send(network, addr string, n, rate int, blocking bool) (dropped int, err error) {
	switch network {
	case SyslogTCP:
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		w := bufio.NewWriterSize(c, 64<<10)
		err = pace(n, rate, func(i int) error {
			m := benchMessage(i)
			w.WriteString(strconv.Itoa(len(m)))
			w.WriteByte(' ')
			_, err := w.Write(m)
			return err
		})
		if err != nil {
			return 0, err
		}
		return 0, w.Flush()
	case SyslogUDP:
		c, err := net.Dial("udp", addr)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return 0, pace(n, rate, func(i int) error {
			_, err := c.Write(benchMessage(i))
			return err
		})
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer syscall.Close(fd)
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: addr}); err != nil {
		return 0, err
	}
	flags := syscall.MSG_DONTWAIT
	if blocking {
		flags = 0
	}
	err = pace(n, rate, func(i int) error {
		err := syscall.Sendto(fd, benchMessage(i), flags, nil)
		if errors.Is(err, syscall.EAGAIN) {
			dropped++
			return nil
		}
		return err
	})
	return dropped, err
}

// pace calls send(i) for i in [0, n), at rate per second (0: unpaced),
// evenly: it waits for each message's time by looking at the clock, as a
// sleep would make bursts of a millisecond.
func pace(n, rate int, send func(i int) error) error {
	start := time.Now()
	for i := range n {
		if rate > 0 {
			due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
			for time.Now().Before(due) {
			}
		}
		if err := send(i); err != nil {
			return err
		}
	}
	return nil
}

// benchSyslog runs a Syslog on listen, has a sender process send b.N
// messages, and reports lines/s (from the start of sending to the last
// line delivered), lost lines (sent, not delivered), and the drops known:
// by the sender (a full socket) and by the kernel (SO_RXQ_OVFL).
func benchSyslog(b *testing.B, o SyslogOptions, rate int, blocking bool) {
	s, err := ListenSyslog(b.Context(), o)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	listen := o.Listen[0]
	a, _ := ParseSyslogAddr(listen)
	addr := s.Addr(listen).String()
	var got atomic.Int64
	progress := make(chan struct{}, 1)
	go func() {
		for batch := range s.Batches() {
			got.Add(int64(batch.Len()))
			s.Ack(batch)
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	n := b.N
	cmd := exec.Command(os.Args[0], "-test.run=^TestSyslogBenchSender$", "-test.v")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d %d %v", senderEnv, a.Network, addr, n, rate, blocking))
	b.ResetTimer()
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("sender: %v\n%s", err, out)
	}
	var senderDropped int
	if i := bytes.Index(out, []byte("SENDER dropped=")); i < 0 {
		b.Fatalf("sender said:\n%s", out)
	} else {
		fmt.Sscan(string(out[i+len("SENDER dropped="):]), &senderDropped)
	}
	end := time.Now()
wait:
	for got.Load()+int64(s.Stats().Listeners[listen].Dropped)+int64(senderDropped) < int64(n) {
		select {
		case <-progress:
			end = time.Now()
		case <-time.After(time.Second):
			break wait // the rest is lost
		}
	}
	elapsed := end.Sub(start) // to the last line delivered
	b.StopTimer()
	c := s.Stats().Listeners[listen]
	g := got.Load()
	b.ReportMetric(float64(g)/elapsed.Seconds(), "lines/s")
	b.ReportMetric(float64(int64(n)-g), "lost")
	b.ReportMetric(float64(senderDropped), "sender-dropped")
	b.ReportMetric(float64(c.Dropped), "kernel-dropped")
	if c.Accepted != uint64(g) || c.Malformed != 0 {
		b.Errorf("counts %+v, delivered %d", c, g)
	}
}

func BenchmarkSyslogUnixgram(b *testing.B) {
	for _, bc := range []struct {
		name     string
		rate     int
		blocking bool
	}{
		{"logger/unpaced", 0, true},           // Apache's logger waits for room
		{"nginx/paced200k", benchRate, false}, // nginx drops on a full socket
		{"nginx/unpaced", 0, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			sock := filepath.Join(b.TempDir(), "log.sock")
			o := SyslogOptions{Listen: []string{"unixgram:" + sock}, AllowUIDs: []uint32{uint32(os.Getuid())}, SocketGroup: -1}
			benchSyslog(b, o, bc.rate, bc.blocking)
		})
	}
}

func BenchmarkSyslogUDP(b *testing.B) {
	for _, bc := range []struct {
		name string
		rate int
	}{
		{"paced200k", benchRate},
		{"unpaced", 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			benchSyslog(b, SyslogOptions{Listen: []string{"udp:127.0.0.1:0"}}, bc.rate, false)
		})
	}
}

func BenchmarkSyslogTCP(b *testing.B) {
	benchSyslog(b, SyslogOptions{Listen: []string{"tcp:127.0.0.1:0"}}, 0, true)
}
