package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/webknock/webknock/firewall"
)

// Errors of RevokeGrant, besides firewall.ErrNoGrant (404).
var (
	// ErrUnauthorized: the server refused the token (401).
	ErrUnauthorized = errors.New("token refused: use the token in the daemon's web.token_file")
	// ErrRevokeDisabled: the server has no usable token file, so it refuses every revoke (403).
	ErrRevokeDisabled = errors.New("revoking is disabled on the daemon: it has no usable web.token_file")
)

// maxResponseBytes bounds what the client reads from the daemon.
const maxResponseBytes = 8 << 20

// client talks to our own daemon only: never through a proxy from the
// environment (the token must not pass through one), never following redirects.
var client = &http.Client{
	Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConns:          1,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	Timeout:       time.Minute,
}

// BaseURL turns a listen address (web.listen) into the URL the command line
// reaches the daemon at: a wildcard host (":7080", "0.0.0.0:7080", "[::]:7080")
// becomes the loopback address of its family.
func BaseURL(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("web.listen %q: %w", listen, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// FetchGrants lists the live grants of the daemon at baseURL (like
// "http://127.0.0.1:7080").
func FetchGrants(ctx context.Context, baseURL string) ([]firewall.Grant, error) {
	u, err := url.JoinPath(baseURL, "api/grants")
	if err != nil {
		return nil, fmt.Errorf("grants: base URL %q: %w", baseURL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("grants: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("grants: %w", err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxResponseBytes)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("grants: GET %s: %s", u, statusMessage(resp, body))
	}
	var wire []grantJSON
	if err := json.NewDecoder(body).Decode(&wire); err != nil {
		return nil, fmt.Errorf("grants: GET %s: %w", u, err)
	}
	out := make([]firewall.Grant, 0, len(wire))
	for i, w := range wire {
		ip, err := netip.ParseAddr(w.IP)
		if err != nil {
			return nil, fmt.Errorf("grants: GET %s: grant %d: %w", u, i, err)
		}
		until, err := time.Parse(time.RFC3339, w.Until)
		if err != nil {
			return nil, fmt.Errorf("grants: GET %s: grant %d: %w", u, i, err)
		}
		out = append(out, firewall.Grant{IP: ip, Sequence: w.Sequence, Ports: w.Ports, Until: until})
	}
	return out, nil
}

// RevokeGrant asks the daemon at baseURL to revoke every grant of ip now.
// A refused token is ErrUnauthorized, a daemon without a token
// ErrRevokeDisabled, an ip without a grant firewall.ErrNoGrant.
func RevokeGrant(ctx context.Context, baseURL, token string, ip netip.Addr) error {
	if token == "" {
		return fmt.Errorf("revoke %s: no token", ip)
	}
	u, err := url.JoinPath(baseURL, "api/grants", ip.String())
	if err != nil {
		return fmt.Errorf("revoke %s: base URL %q: %w", ip, baseURL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
	if err != nil {
		return fmt.Errorf("revoke %s: %w", ip, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("revoke %s: %w", ip, err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxResponseBytes)
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK:
		return nil
	case http.StatusUnauthorized:
		return fmt.Errorf("revoke %s: %w", ip, ErrUnauthorized)
	case http.StatusForbidden:
		return fmt.Errorf("revoke %s: %w", ip, ErrRevokeDisabled)
	case http.StatusNotFound:
		return fmt.Errorf("revoke %s: %w", ip, firewall.ErrNoGrant)
	}
	return fmt.Errorf("revoke %s: DELETE %s: %s", ip, u, statusMessage(resp, body))
}

// statusMessage is the status and the first line of the daemon's answer.
func statusMessage(resp *http.Response, body io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(body, 512))
	msg, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if msg == "" {
		return resp.Status
	}
	return resp.Status + ": " + msg
}
