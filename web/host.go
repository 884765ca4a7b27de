package web

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// hostSet is the Host header values a TCP listener answers to. A web page on
// any site can make the browser of someone on the status page's network
// send requests to it under a name of the attacker's (DNS rebinding); such a
// request carries that name in Host, and is refused.
type hostSet struct {
	port  string          // the bound port: every accepted Host has it
	hosts map[string]bool // normalized: lower-case names, IP literals without brackets, unmapped
	anyIP bool            // a wildcard listener: any IP literal is its own address
}

// listenerHosts is what a listener bound at addr for the configured listen
// answers to: the configured host, the bound address; for a loopback or
// wildcard listener also localhost, 127.0.0.1 and ::1; for a wildcard
// listener any IP literal. Always with the bound port.
func listenerHosts(listen string, addr net.Addr) hostSet {
	hs := hostSet{hosts: map[string]bool{}}
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return hs // accepts nothing
	}
	ap := ta.AddrPort()
	ip := ap.Addr().Unmap()
	hs.port = strconv.Itoa(int(ap.Port()))
	hs.hosts[normalHost(ip.String())] = true
	if h, _, err := net.SplitHostPort(listen); err == nil && h != "" {
		hs.hosts[normalHost(h)] = true
	}
	if ip.IsLoopback() || ip.IsUnspecified() {
		for _, h := range []string{"localhost", "127.0.0.1", "::1"} {
			hs.hosts[h] = true
		}
	}
	hs.anyIP = ip.IsUnspecified()
	return hs
}

// normalHost lower-cases a name and writes an IP literal one way.
func normalHost(h string) string {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap().String()
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// allows says whether the Host header value names this listener. A Host
// without a port means port 80.
func (hs hostSet) allows(hostport string) bool {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]"), "80"
	}
	if host == "" || port != hs.port {
		return false
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return false
		}
		return hs.anyIP || hs.hosts[a.Unmap().String()]
	}
	return hs.hosts[normalHost(host)]
}

// checkHost refuses requests whose Host does not name the listener.
func checkHost(hs hostSet, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hs.allows(r.Host) {
			http.Error(w, "misdirected request: the Host header does not name this server (see web.listen)", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}
