package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/internal/statedir"
	"github.com/webknock/webknock/web"
)

// runFlush is `webknock flush`: remove our chains and jumps. It holds the
// state directory's lock meanwhile, so it never runs beside the daemon,
// which would put everything back within a second.
func runFlush(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	cfg, err := loadConfig(env, fs, checkConfig)
	if err != nil {
		return err
	}
	lock, err := statedir.Acquire(cfg.StateDir)
	if le := (*statedir.LockedError)(nil); errors.As(err, &le) {
		return fmt.Errorf("flush refused: %w; stop it first (systemctl stop webknock), then flush", err)
	}
	if err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	defer lock.Close()
	logger := slog.New(slog.NewTextHandler(env.stderr, nil))
	if err := firewall.Flush(ctx, firewallOptions(cfg, logger)); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if cfg.Firewall.Backend == "nftables" {
		_, err = fmt.Fprintf(env.stdout, "removed table inet %s (IPv4 and IPv6)\n", cfg.Firewall.Table)
		return err
	}
	_, err = fmt.Fprintf(env.stdout, "removed chain %s and its jump from %s (IPv4 and IPv6)\n", cfg.Firewall.Chain, cfg.Firewall.Hook)
	return err
}

// admin returns the client of the running daemon's admin socket.
func admin(env *environment, fs *pflag.FlagSet) (*web.Client, error) {
	cfg, err := loadConfig(env, fs, nil)
	if err != nil {
		return nil, err
	}
	if cfg.Web.Socket == "" {
		return nil, fmt.Errorf("web.socket is empty in %s: the daemon serves no admin socket", cfg.File)
	}
	return web.NewClient(cfg.Web.Socket), nil
}

// noDaemonHint follows err, a failure to reach the daemon on the socket
// it names: either the daemon does not run, or it runs with another
// configuration file, whose web.socket is elsewhere.
func noDaemonHint(w io.Writer, fs *pflag.FlagSet, err error) {
	path, _ := fs.GetString("config")
	why := "no daemon has made that socket"
	if errors.Is(err, syscall.ECONNREFUSED) {
		why = "the socket is there but no daemon answers on it"
	}
	fmt.Fprintf(w, "hint: %s: the daemon is probably not running (systemctl status webknock),\n"+
		"  or it was started with another configuration, whose web.socket is not the one in %s:\n"+
		"  name that file with -c FILE.\n", why, path)
}

// runStatus is `webknock status`: the live grants and lockouts.
func runStatus(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	c, err := admin(env, fs)
	if err != nil {
		return err
	}
	grants, err := c.Grants(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	lockouts, err := c.Lockouts(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	w := env.stdout
	if len(grants) == 0 {
		fmt.Fprintln(w, "no active grants")
	} else {
		fmt.Fprintf(w, "%-39s  %-10s  %-20s  %-9s  %-10s  %s\n", "IP", "SEQUENCE", "UNTIL", "LEFT", "PORTS", "FROM")
		for _, g := range grants {
			ports := make([]string, len(g.Ports))
			for i, p := range g.Ports {
				ports[i] = p.String()
			}
			left := time.Until(g.Until).Round(time.Second)
			fmt.Fprintf(w, "%-39s  %-10s  %-20s  %-9s  %-10s  %s\n", firewall.FormatSource(g.Source()), g.Sequence, rfc3339(g.Until), left, strings.Join(ports, ","), g.From())
		}
	}
	if len(lockouts) == 0 {
		_, err = fmt.Fprintln(w, "no lockouts")
		return err
	}
	fmt.Fprintf(w, "\n%-39s  %-20s  %s\n", "LOCKED OUT", "UNTIL", "LEFT")
	for _, l := range lockouts {
		fmt.Fprintf(w, "%-39s  %-20s  %s\n", l.Client, rfc3339(l.Until), time.Until(l.Until).Round(time.Second))
	}
	return nil
}

// ipArg reads the one IP address a command takes.
func ipArg(env *environment, fs *pflag.FlagSet, args []string) (netip.Addr, error) {
	if len(args) != 1 {
		return netip.Addr{}, usagef(env, fs, "name exactly one IP address")
	}
	ip, err := netip.ParseAddr(args[0])
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, usagef(env, fs, "%q is not an IP address", args[0])
	}
	return ip.Unmap(), nil
}

func revokeFlags(fs *pflag.FlagSet) {
	fs.Bool("kill-sessions", false, "also end the revoked clients' established sessions (conntrack); by default they go on")
}

// runRevoke is `webknock revoke IP|NET/BITS`: end the grants of an
// address or network now, and with --kill-sessions their sessions.
func runRevoke(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) != 1 {
		return usagef(env, fs, "name exactly one IP address or network")
	}
	src, err := firewall.ParseSource(args[0])
	if err != nil {
		return usagef(env, fs, "%q is not an IP address or network (NET/BITS)", args[0])
	}
	kill, _ := fs.GetBool("kill-sessions")
	c, err := admin(env, fs)
	if err != nil {
		return err
	}
	// The client's errors name the address already.
	r, err := c.Revoke(ctx, src, kill)
	if len(r.Grants) == 0 {
		return err
	}
	seqs := make([]string, 0, len(r.Grants))
	for _, g := range r.Grants {
		if !slices.Contains(seqs, g.Sequence) {
			seqs = append(seqs, g.Sequence)
		}
	}
	line := fmt.Sprintf("revoked %s (%s)", firewall.FormatSource(src), strings.Join(seqs, ", "))
	if kill && err == nil {
		line += fmt.Sprintf("; %d %s ended", r.Sessions, plural(r.Sessions, "session", "sessions"))
	}
	if _, werr := fmt.Fprintln(env.stdout, line); werr != nil {
		return werr
	}
	return err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// runUnlock is `webknock unlock IP`: end an address's lockout.
func runUnlock(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	ip, err := ipArg(env, fs, args)
	if err != nil {
		return err
	}
	c, err := admin(env, fs)
	if err != nil {
		return err
	}
	// The client's errors name the address already.
	if err := c.Unlock(ctx, ip); err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.stdout, "unlocked %s\n", ip)
	return err
}

func grantFlags(fs *pflag.FlagSet) {
	fs.Duration("for", 0, "how long, at most the sequence's window (default: the window)")
	fs.String("sequence", "", "whose ports to open (default: the first sequence)")
}

// runGrant is `webknock grant IP`: let an address in by hand.
func runGrant(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	ip, err := ipArg(env, fs, args)
	if err != nil {
		return err
	}
	dur, _ := fs.GetDuration("for")
	seq, _ := fs.GetString("sequence")
	if dur < 0 {
		return usagef(env, fs, "--for %s is negative", dur)
	}
	c, err := admin(env, fs)
	if err != nil {
		return err
	}
	g, err := c.Grant(ctx, ip, seq, dur)
	if err != nil {
		return err // it names the address already
	}
	ports := make([]string, len(g.Ports))
	for i, p := range g.Ports {
		ports[i] = p.String()
	}
	_, err = fmt.Fprintf(env.stdout, "granted %s %s until %s (sequence %s)\n", firewall.FormatSource(g.Source()), strings.Join(ports, ","), rfc3339(g.Until), g.Sequence)
	return err
}
