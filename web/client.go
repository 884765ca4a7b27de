package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/knock"
)

// Errors of the Client, besides firewall.ErrNoGrant (Revoke of an address
// without a grant) and fs.ErrPermission (not root nor the daemon's user).
var (
	// ErrNoDaemon: nothing accepts on the socket.
	ErrNoDaemon = errors.New("no daemon on the socket")
	// ErrNotLocked: Unlock of an address that is not locked out.
	ErrNotLocked = errors.New("not locked out")
)

// maxResponseBytes bounds what the client reads from the daemon.
const maxResponseBytes = 8 << 20

// Client talks to a running daemon over its admin socket: what the
// command line uses, so it never sends a token over TCP. Its errors say
// what failed, naming the address or network: the caller adds nothing.
type Client struct {
	socket string
	dial   func(ctx context.Context) (net.Conn, error) // tests dial as another user
	hc     *http.Client
}

// NewClient returns a client of the daemon whose admin socket (web.socket)
// is at socket. It connects on each call.
func NewClient(socket string) *Client {
	c := &Client{socket: socket}
	d := &net.Dialer{Timeout: 10 * time.Second}
	c.dial = func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "unix", socket) }
	c.hc = &http.Client{
		Transport: &http.Transport{
			Proxy: nil, // never through a proxy from the environment
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return c.dial(ctx)
			},
			ResponseHeaderTimeout: 30 * time.Second,
			MaxIdleConns:          1,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       time.Minute,
	}
	return c
}

// Grants lists the live grants.
func (c *Client) Grants(ctx context.Context) ([]firewall.Grant, error) {
	var wire []grantJSON
	if err := c.getJSON(ctx, "/api/grants", &wire); err != nil {
		return nil, fmt.Errorf("grants: %w", err)
	}
	out := make([]firewall.Grant, 0, len(wire))
	for i, w := range wire {
		g, err := w.grant()
		if err != nil {
			return nil, fmt.Errorf("grants: grant %d: %w", i, err)
		}
		out = append(out, g)
	}
	return out, nil
}

// Lockouts lists the clients locked out now, soonest end first.
func (c *Client) Lockouts(ctx context.Context) ([]knock.Locked, error) {
	var wire []lockoutJSON
	if err := c.getJSON(ctx, "/api/lockouts", &wire); err != nil {
		return nil, fmt.Errorf("lockouts: %w", err)
	}
	out := make([]knock.Locked, 0, len(wire))
	for i, w := range wire {
		ip, err := netip.ParseAddr(w.IP)
		if err != nil {
			return nil, fmt.Errorf("lockouts: lockout %d: %w", i, err)
		}
		until, err := time.Parse(time.RFC3339, w.Until)
		if err != nil {
			return nil, fmt.Errorf("lockouts: lockout %d: %w", i, err)
		}
		out = append(out, knock.Locked{Client: ip, Until: until})
	}
	return out, nil
}

// Health is nil when the daemon is well, else what is wrong, one item a
// problem.
func (c *Client) Health(ctx context.Context) ([]string, error) {
	resp, err := c.do(ctx, http.MethodGet, "/healthz", nil)
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("health: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return nil, nil
	case http.StatusServiceUnavailable:
		var why []string
		for l := range strings.Lines(string(b)) {
			if l = strings.TrimSpace(l); l != "" {
				why = append(why, l)
			}
		}
		return why, nil
	}
	return nil, fmt.Errorf("health: %w", c.statusError(resp, bytes.NewReader(b)))
}

// Revoked is what a revoke ended.
type Revoked struct {
	Grants   []firewall.Grant
	Sessions int // established sessions ended, when asked to kill them
}

// Revoke ends now every grant whose source overlaps src (an address, as
// its single-address prefix, or a network), and with killSessions their
// established sessions too. A src without a grant is firewall.ErrNoGrant.
// When the grants ended but their sessions could not all be ended, it
// returns what ended and an error that says why.
func (c *Client) Revoke(ctx context.Context, src netip.Prefix, killSessions bool) (Revoked, error) {
	name := firewall.FormatSource(src)
	path := "/api/grants/" + name
	if killSessions {
		path += "?kill_sessions=true"
	}
	resp, err := c.do(ctx, http.MethodDelete, path, nil)
	if err != nil {
		return Revoked{}, fmt.Errorf("revoke %s: %w", name, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return Revoked{}, fmt.Errorf("revoke %s: %w", name, firewall.ErrNoGrant)
	default:
		return Revoked{}, fmt.Errorf("revoke %s: %w", name, c.statusError(resp, resp.Body))
	}
	var wire revokeJSON
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(&wire); err != nil {
		return Revoked{}, fmt.Errorf("revoke %s: the daemon's answer: %w", name, err)
	}
	var out Revoked
	for i, w := range wire.Revoked {
		g, err := w.grant()
		if err != nil {
			return Revoked{}, fmt.Errorf("revoke %s: the daemon's answer: grant %d: %w", name, i, err)
		}
		out.Grants = append(out.Grants, g)
	}
	if wire.SessionsEnded != nil {
		out.Sessions = *wire.SessionsEnded
	}
	if wire.SessionsError != "" {
		return out, errors.New(wire.SessionsError)
	}
	return out, nil
}

// Grant opens the ports of sequence ("" for the daemon's default) to ip
// for d (0: the sequence's window), and returns the grant as the daemon
// applied it.
func (c *Client) Grant(ctx context.Context, ip netip.Addr, sequence string, d time.Duration) (firewall.Grant, error) {
	req := grantRequest{IP: ip.String(), Sequence: sequence}
	if d != 0 { // 0: the sequence's window; a negative one is the daemon's to refuse
		req.For = d.String()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return firewall.Grant{}, fmt.Errorf("grant %s: %w", ip, err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/api/grants", body)
	if err != nil {
		return firewall.Grant{}, fmt.Errorf("grant %s: %w", ip, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return firewall.Grant{}, fmt.Errorf("grant %s: %w", ip, c.statusError(resp, resp.Body))
	}
	var w grantJSON
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(&w); err != nil {
		return firewall.Grant{}, fmt.Errorf("grant %s: the daemon's answer: %w", ip, err)
	}
	g, err := w.grant()
	if err != nil {
		return firewall.Grant{}, fmt.Errorf("grant %s: the daemon's answer: %w", ip, err)
	}
	return g, nil
}

// Unlock ends ip's lockout now; an ip that is not locked out is ErrNotLocked.
func (c *Client) Unlock(ctx context.Context, ip netip.Addr) error {
	resp, err := c.do(ctx, http.MethodDelete, "/api/lockouts/"+ip.String(), nil)
	if err != nil {
		return fmt.Errorf("unlock %s: %w", ip, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK:
		return nil
	case http.StatusNotFound:
		return fmt.Errorf("unlock %s: %w", ip, ErrNotLocked)
	}
	return fmt.Errorf("unlock %s: %w", ip, c.statusError(resp, resp.Body))
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return c.statusError(resp, resp.Body)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(v); err != nil {
		return fmt.Errorf("the daemon's answer to GET %s: %w", path, err)
	}
	return nil
}

// do sends one request to the daemon; a failure to connect is explained.
func (c *Client) do(ctx context.Context, method, path string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	// The host is a placeholder: the admin socket does not check it.
	req, err := http.NewRequestWithContext(ctx, method, "http://webknock"+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	return resp, nil
}

// clientError is a message for the user that still answers errors.Is for
// its kind and its cause.
type clientError struct {
	msg       string
	kind, err error
}

func (e *clientError) Error() string   { return e.msg }
func (e *clientError) Unwrap() []error { return []error{e.kind, e.err} }

// dialError says what to do when the socket cannot be reached.
func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return &clientError{
			msg:  fmt.Sprintf("cannot reach the daemon on %s: is `webknock run` running?", c.socket),
			kind: ErrNoDaemon, err: err,
		}
	case errors.Is(err, fs.ErrPermission):
		return &clientError{
			msg:  fmt.Sprintf("cannot reach the daemon on %s: permission denied: the admin socket is for root and the daemon's user (try sudo)", c.socket),
			kind: fs.ErrPermission, err: err,
		}
	}
	return fmt.Errorf("cannot reach the daemon on %s: %w", c.socket, err)
}

// statusError is an answer other than the one expected: its status and
// the first line of its body.
func (c *Client) statusError(resp *http.Response, body io.Reader) error {
	b, _ := io.ReadAll(io.LimitReader(body, 512))
	msg, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if resp.StatusCode == http.StatusForbidden {
		return &clientError{
			msg:  fmt.Sprintf("the daemon on %s refused uid %d (%s): the admin socket is for root and the daemon's user (try sudo)", c.socket, os.Geteuid(), msg),
			kind: fs.ErrPermission, err: errors.New(msg),
		}
	}
	if msg == "" {
		return errors.New(resp.Status)
	}
	return errors.New(resp.Status + ": " + msg)
}
