package firewall

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

// memConntrack is a conntrack table in memory.
type memConntrack struct {
	mu      sync.Mutex
	flows   []conntrack.Flow
	dumpErr error
	// fail, when set, is asked before each delete; its error is the
	// delete's.
	fail func(conntrack.Flow) error
	// hang, when set, makes Dump wait until the connection is closed.
	hang   chan struct{}
	closed bool
}

var _ conntrackConn = (*memConntrack)(nil)

func (m *memConntrack) Dump(*conntrack.DumpOptions) ([]conntrack.Flow, error) {
	if m.hang != nil {
		<-m.hang
		return nil, errors.New("use of closed file")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dumpErr != nil {
		return nil, m.dumpErr
	}
	return slices.Clone(m.flows), nil
}

func (m *memConntrack) Delete(f conntrack.Flow) error {
	if m.fail != nil {
		if err := m.fail(f); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	i := slices.IndexFunc(m.flows, func(g conntrack.Flow) bool {
		return g.TupleOrig == f.TupleOrig && g.TupleReply == f.TupleReply
	})
	if i < 0 {
		return syscall.ENOENT
	}
	m.flows = slices.Delete(m.flows, i, i+1)
	return nil
}

func (m *memConntrack) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed && m.hang != nil {
		close(m.hang)
	}
	m.closed = true
	return nil
}

// flow is a flow from src to dst ("ADDR:PORT") as conntrack holds it
// without NAT.
func flow(proto uint8, src, dst string) conntrack.Flow {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	return conntrack.NewFlow(proto, conntrack.StatusAssured, s.Addr(), d.Addr(), s.Port(), d.Port(), 300, 0)
}

// sessionFlows are named flows of a host 192.0.2.1 / 2001:db8::1.
func sessionFlows() map[string]conntrack.Flow {
	tcp, udp := uint8(syscall.IPPROTO_TCP), uint8(syscall.IPPROTO_UDP)
	nat := flow(tcp, "192.0.2.7:40002", "192.0.2.1:8022")
	nat.TupleReply.IP.SourceAddress = mustAddr("198.51.100.10") // the DNAT's target
	nat.TupleReply.Proto.SourcePort = 22
	return map[string]conntrack.Flow{
		"ssh":          flow(tcp, "192.0.2.7:40000", "192.0.2.1:22"),
		"neighbour":    flow(tcp, "192.0.2.8:40001", "192.0.2.1:22"),
		"web":          flow(tcp, "192.0.2.7:40005", "192.0.2.1:80"),
		"udp 22":       flow(udp, "192.0.2.7:40006", "192.0.2.1:22"),
		"dns":          flow(udp, "192.0.2.7:40007", "192.0.2.1:53"),
		"stranger":     flow(tcp, "198.51.100.2:40000", "192.0.2.1:22"),
		"ipv6":         flow(tcp, "[2001:db8::7]:40000", "[2001:db8::1]:22"),
		"dnat":         nat,
		"taken up":     flow(tcp, "192.0.2.1:22", "192.0.2.7:40003"),
		"our outbound": flow(tcp, "192.0.2.1:50000", "192.0.2.7:22"),
	}
}

func TestKillSessions(t *testing.T) {
	tests := []struct {
		name  string
		src   string
		ports []Port
		want  []string // the flows deleted
	}{
		{"address", "192.0.2.7", []Port{ssh}, []string{"dnat", "ssh", "taken up"}},
		{"IPv4-mapped address", "::ffff:192.0.2.7", []Port{ssh}, []string{"dnat", "ssh", "taken up"}},
		{"network", "192.0.2.0/24", []Port{ssh}, []string{"dnat", "neighbour", "ssh", "taken up"}}, // not "our outbound"
		{"two ports", "192.0.2.7", []Port{ssh, dns}, []string{"dnat", "dns", "ssh", "taken up"}},
		{"IPv6", "2001:db8::/64", []Port{ssh}, []string{"ipv6"}},
		{"none", "198.51.100.9", []Port{ssh}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			f := e.open(e.options())
			named := sessionFlows()
			ct := &memConntrack{}
			for _, fl := range named {
				ct.flows = append(ct.flows, fl)
			}
			f.conntrack = func() (conntrackConn, error) { return ct, nil }
			f.hostAddrs = func() []netip.Addr { return []netip.Addr{mustAddr("192.0.2.1"), mustAddr("2001:db8::1")} }
			src, err := ParseSource(tc.src)
			if err != nil {
				t.Fatal(err)
			}
			n, err := f.KillSessions(ctx0, src, tc.ports)
			if err != nil || n != len(tc.want) {
				t.Fatalf("KillSessions(%s, %v) = %d, %v; want %d", tc.src, tc.ports, n, err, len(tc.want))
			}
			var gone []string
			for name, fl := range named {
				if !slices.ContainsFunc(ct.flows, func(g conntrack.Flow) bool { return g.TupleOrig == fl.TupleOrig }) {
					gone = append(gone, name)
				}
			}
			slices.Sort(gone)
			if !slices.Equal(gone, tc.want) {
				t.Errorf("KillSessions(%s, %v) deleted %q, want %q", tc.src, tc.ports, gone, tc.want)
			}
			if !ct.closed {
				t.Error("the conntrack connection was not closed")
			}
		})
	}
}

func TestKillSessionsFailures(t *testing.T) {
	e := newEnv(t)
	f := e.open(e.options())
	src := host(mustAddr("192.0.2.7"))
	named := sessionFlows()
	tests := []struct {
		name    string
		ct      *memConntrack
		dialErr error
		ctx     func() (context.Context, context.CancelFunc)
		want    int
		wantErr string
	}{
		{name: "no conntrack", dialErr: errors.New("protocol not supported"), wantErr: "end sessions of 192.0.2.7: conntrack: protocol not supported"},
		{name: "dump fails", ct: &memConntrack{dumpErr: syscall.EPERM}, wantErr: "list conntrack entries: operation not permitted"},
		{name: "a delete fails", ct: &memConntrack{
			flows: []conntrack.Flow{named["ssh"], named["taken up"]},
			fail: func(fl conntrack.Flow) error {
				if fl.TupleOrig.Proto.SourcePort == 22 {
					return syscall.EBUSY
				}
				return nil
			},
		}, want: 1, wantErr: "delete conntrack entry"},
		{name: "ended meanwhile", ct: &memConntrack{
			flows: []conntrack.Flow{named["ssh"], named["taken up"]},
			fail: func(fl conntrack.Flow) error {
				if fl.TupleOrig.Proto.SourcePort == 22 {
					return syscall.ENOENT
				}
				return nil
			},
		}, want: 1},
		{name: "kernel hangs", ct: &memConntrack{hang: make(chan struct{})},
			ctx:     func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx0, 10*time.Millisecond) },
			wantErr: "context deadline exceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.conntrack = func() (conntrackConn, error) {
				if tc.dialErr != nil {
					return nil, tc.dialErr
				}
				return tc.ct, nil
			}
			ctx, cancel := ctx0, context.CancelFunc(func() {})
			if tc.ctx != nil {
				ctx, cancel = tc.ctx()
			}
			defer cancel()
			n, err := f.KillSessions(ctx, src, []Port{ssh})
			if n != tc.want || (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("KillSessions = %d, %v; want %d, %q", n, err, tc.want, tc.wantErr)
			}
			if tc.ct != nil && !tc.ct.closed {
				t.Error("the conntrack connection was not closed")
			}
		})
	}
	for _, bad := range []struct {
		src   netip.Prefix
		ports []Port
	}{{netip.Prefix{}, []Port{ssh}}, {src, nil}, {src, []Port{{"sctp", 22}}}} {
		if n, err := f.KillSessions(ctx0, bad.src, bad.ports); err == nil {
			t.Errorf("KillSessions(%v, %v) = %d, nil; want an error", bad.src, bad.ports, n)
		}
	}
}

// TestKillSessionsDryRun: the dry run touches no kernel: it says what it
// would do.
func TestKillSessionsDryRun(t *testing.T) {
	log := &syncBuffer{}
	f, err := Open(ctx0, Options{Backend: backendDryRun, IPv6Off: true, Logger: newTextLogger(log)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.conntrack = func() (conntrackConn, error) {
		t.Error("the dry run opened conntrack")
		return nil, errors.New("no")
	}
	n, err := f.KillSessions(ctx0, netip.MustParsePrefix("192.0.2.0/24"), []Port{ssh})
	if n != 0 || err != nil {
		t.Errorf("KillSessions = %d, %v; want 0, nil", n, err)
	}
	if want := `msg="dry-run: would end the sessions" ip=192.0.2.0/24 ports=[22/tcp]`; !strings.Contains(log.String(), want) {
		t.Errorf("log lacks %s:\n%s", want, log)
	}
}
