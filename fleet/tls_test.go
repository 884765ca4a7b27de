package fleet

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/webknock/webknock/internal/testpki"
)

// The bus over TLS with client certificates: a client with the CA and
// its certificate connects; one without a certificate does not.
func TestConnectTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, dir, "bus-ca")
	_, _, srvCert := ca.Issue(t, "bus", true, net.IPv4(127, 0, 0, 1))
	certFile, keyFile, _ := ca.Issue(t, "detector", false)
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		TLS: true, TLSVerify: true, TLSTimeout: 2,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: ca.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer func() { s.Shutdown(); s.WaitForShutdown() }()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	url := "tls://" + s.Addr().String()
	try := func(o ConnOptions) bool {
		t.Helper()
		o.Servers, o.Group = []string{url}, "test"
		c, err := Connect(o)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if c.Connected() {
				return true
			}
		}
		return false
	}
	if !try(ConnOptions{CAFile: ca.File, CertFile: certFile, KeyFile: keyFile}) {
		t.Error("a client with its certificate did not connect")
	}
	if try(ConnOptions{CAFile: ca.File}) {
		t.Error("a client without a certificate connected")
	}
}
