package web

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

func TestListenerHosts(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	tests := []struct {
		listen string
		bound  net.Addr
		host   string
		want   bool
	}{
		// loopback
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "127.0.0.1:7080", true},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "localhost:7080", true},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "LocalHost.:7080", true},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "[::1]:7080", true},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "[::ffff:127.0.0.1]:7080", true},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "attacker.example:7080", false},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "localhost.attacker.example:7080", false},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "127.0.0.1:7081", false},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "127.0.0.1", false},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "192.0.2.1:7080", false},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), "", false},
		{"127.0.0.1:7080", tcp("127.0.0.1:7080"), ":7080", false},
		{"[::1]:7080", tcp("[::1]:7080"), "[::1]:7080", true},
		{"[::1]:7080", tcp("[::1]:7080"), "localhost:7080", true},
		{"localhost:7080", tcp("127.0.0.1:7080"), "localhost:7080", true},
		// port 80: a Host without a port
		{"127.0.0.1:80", tcp("127.0.0.1:80"), "localhost", true},
		{"127.0.0.1:80", tcp("127.0.0.1:80"), "[::1]", true},
		{"127.0.0.1:80", tcp("127.0.0.1:80"), "attacker.example", false},
		// wildcard: any IP literal, no other name
		{":7080", tcp("[::]:7080"), "192.0.2.1:7080", true},
		{":7080", tcp("[::]:7080"), "[2001:db8::1]:7080", true},
		{":7080", tcp("[::]:7080"), "localhost:7080", true},
		{":7080", tcp("[::]:7080"), "attacker.example:7080", false},
		{":7080", tcp("[::]:7080"), "192.0.2.1:80", false},
		{":7080", tcp("[::]:7080"), "[fe80::1%eth0]:7080", false},
		{"0.0.0.0:7080", tcp("0.0.0.0:7080"), "198.51.100.4:7080", true},
		// one address: that address, the configured name
		{"192.0.2.5:7080", tcp("192.0.2.5:7080"), "192.0.2.5:7080", true},
		{"192.0.2.5:7080", tcp("192.0.2.5:7080"), "localhost:7080", false},
		{"192.0.2.5:7080", tcp("192.0.2.5:7080"), "127.0.0.1:7080", false},
		{"192.0.2.5:7080", tcp("192.0.2.5:7080"), "192.0.2.6:7080", false},
		{"status.example.com:7080", tcp("192.0.2.5:7080"), "status.example.com:7080", true},
		{"status.example.com:7080", tcp("192.0.2.5:7080"), "Status.Example.COM.:7080", true},
		{"status.example.com:7080", tcp("192.0.2.5:7080"), "192.0.2.5:7080", true},
		{"status.example.com:7080", tcp("192.0.2.5:7080"), "other.example.com:7080", false},
		// a port of 0 asked for: the bound one counts
		{"127.0.0.1:0", tcp("127.0.0.1:41234"), "127.0.0.1:41234", true},
		{"127.0.0.1:0", tcp("127.0.0.1:41234"), "127.0.0.1:0", false},
	}
	for _, tt := range tests {
		if got := listenerHosts(tt.listen, tt.bound).allows(tt.host); got != tt.want {
			t.Errorf("listener %s bound at %s: allows(%q) = %v, want %v", tt.listen, tt.bound, tt.host, got, tt.want)
		}
	}
	if listenerHosts("x", &net.UnixAddr{Name: "/x", Net: "unix"}).allows("localhost:80") {
		t.Error("a listener that is not TCP allows a host")
	}
}

// TestHostCheck sends requests with a foreign Host over real connections:
// refused over TCP, served over the admin socket.
func TestHostCheck(t *testing.T) {
	path := socketPath(t)
	f := newFixture(t, "", func(o *Options) { o.Listeners = bind(t, "127.0.0.1:0", path) })
	startServe(t, f.s)
	addr := tcpAddr(t, f.s)
	_, port, _ := net.SplitHostPort(addr)

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, tt := range []struct {
		host string
		want int
	}{
		{addr, 200},
		{"localhost:" + port, 200},
		{"[::1]:" + port, 200},
		{"attacker.example:" + port, http.StatusMisdirectedRequest},
		{"attacker.example", http.StatusMisdirectedRequest},
	} {
		for _, target := range []string{"/healthz", "/api/grants", "/"} {
			req, _ := http.NewRequest("GET", "http://"+addr+target, nil)
			req.Host = tt.host
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("GET %s with Host %q = %d %q, want %d", target, tt.host, resp.StatusCode, body, tt.want)
			}
			if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("GET %s with Host %q: no security headers", target, tt.host)
			}
		}
	}

	// The admin socket does not look at Host.
	utr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}
	defer utr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: utr, Timeout: 10 * time.Second}).Get("http://attacker.example/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /healthz over the socket with Host attacker.example = %d, want 200", resp.StatusCode)
	}
}
