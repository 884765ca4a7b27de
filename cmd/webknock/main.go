// Command webknock opens a firewall port to a client that requested a secret
// sequence of URLs from an ordinary web server, as its access log shows.
// This file holds the command line; replay.go wires log → knock.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/config"
	"github.com/webknock/webknock/firewall"
	"github.com/webknock/webknock/web"
	"github.com/webknock/webknock/weblog"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitFail  = 1 // bad configuration, unreadable log
	exitUsage = 2 // bad command line
)

// errUsage marks command line mistakes; the message has been printed.
var errUsage = errors.New("usage")

type command struct {
	name    string
	summary string
	usage   string
	example string
	run     func(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error
	flags   func(fs *pflag.FlagSet) // the command's own flags, if any
	config  bool                    // takes -c FILE
	// overrides are the configuration keys the command uses that flags
	// may override (config.RegisterFlags): help lists no flag it ignores.
	overrides []string
}

// environment is what a command may touch besides its arguments.
type environment struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	environ        []string
}

var commands = []*command{
	{
		name:      "replay",
		summary:   "print the knock events of access logs, touching no firewall",
		usage:     "webknock replay -c FILE [--json] [--parse-all] LOG... (- for standard input)",
		example:   "webknock replay -c /etc/webknock/webknock.yaml /var/log/nginx/access.log.1 /var/log/nginx/access.log",
		flags:     replayFlags,
		run:       runReplay,
		config:    true,
		overrides: []string{"log.format"},
	},
	{
		name:      "run",
		summary:   "follow the access logs and open the firewall for clients that knock",
		usage:     "webknock run -c FILE [--json-logs] [--debug]",
		example:   "webknock run -c /etc/webknock/webknock.yaml",
		flags:     runFlags,
		run:       runRun,
		config:    true,
		overrides: config.FlagKeys(),
	},
	{
		name:      "flush",
		summary:   "remove webknock's firewall chains and jumps (refused while the daemon runs)",
		usage:     "webknock flush -c FILE",
		example:   "webknock flush -c /etc/webknock/webknock.yaml",
		run:       runFlush,
		config:    true,
		overrides: []string{"state_dir", "firewall.backend"},
	},
	{
		name:    "status",
		summary: "list the live grants and lockouts of the running daemon (via web.socket)",
		usage:   "webknock status -c FILE",
		example: "webknock status -c /etc/webknock/webknock.yaml",
		run:     runStatus,
		config:  true,
	},
	{
		name:    "revoke",
		summary: "end the access of an address or network now (via web.socket)",
		usage:   "webknock revoke -c FILE [--kill-sessions] IP|NET/BITS",
		example: "webknock revoke -c /etc/webknock/webknock.yaml --kill-sessions 192.0.2.7",
		flags:   revokeFlags,
		run:     runRevoke,
		config:  true,
	},
	{
		name:    "grant",
		summary: "let an address in by hand, for at most a sequence's window (via web.socket)",
		usage:   "webknock grant -c FILE IP [--for DUR] [--sequence NAME]",
		example: "webknock grant -c /etc/webknock/webknock.yaml 198.51.100.7 --for 10m",
		flags:   grantFlags,
		run:     runGrant,
		config:  true,
	},
	{
		name:    "unlock",
		summary: "end an address's lockout (via web.socket)",
		usage:   "webknock unlock -c FILE IP",
		example: "webknock unlock -c /etc/webknock/webknock.yaml 198.51.100.7",
		run:     runUnlock,
		config:  true,
	},
	{
		name:      "check",
		summary:   "validate the configuration exactly as run does; exit 1 listing every problem",
		usage:     "webknock check -c FILE",
		example:   "webknock check -c /etc/webknock/webknock.yaml",
		run:       runCheck,
		config:    true,
		overrides: config.FlagKeys(), // check what run would run
	},
	{
		name:    "init",
		summary: "print random knock paths, or a new one-time key's, as a sequences: block",
		usage: "webknock init [--name NAME] [--steps N] [--prefix /k/] [--ports 22/tcp] [--bytes 12] [--token FILE]\n" +
			"  webknock init --one-time [--totp] [--name NAME] [--key FILE] [--passphrase] [--period 1m] [--skew 1] ...",
		example: "webknock init --name ssh --steps 3 --ports 22/tcp --token /etc/webknock/token\n" +
			"  webknock init --one-time --name alice --key /etc/webknock/keys/alice.key",
		flags: initFlags,
		run:   runInit,
	},
	{
		name:    "keygen",
		summary: "write an ed25519 key for fleet.signing_key_file and print its public key",
		usage:   "webknock keygen -o FILE [--force]",
		example: "webknock keygen -o /etc/webknock/fleet.key",
		flags:   keygenFlags,
		run:     runKeygen,
	},
	{
		name:    "url",
		summary: "print the URLs that knock now (or at a given time)",
		usage:   "webknock url -c FILE [--sequence NAME] [--at TIME] [--base URL]",
		example: "webknock url -c /etc/webknock/webknock.yaml --sequence alice --base https://www.example.com",
		flags:   urlFlags,
		run:     runURL,
		config:  true,
	},
	{
		name:    "helper",
		summary: "write a web page that computes a one-time sequence's URLs and knocks",
		usage:   "webknock helper -c FILE [--sequence NAME] --base URL [--passphrase] -o FILE.html",
		example: "webknock helper -c /etc/webknock/webknock.yaml --sequence alice --base https://www.example.com -o alice.html",
		flags:   helperFlags,
		run:     runHelper,
		config:  true,
	},
	{
		name:    "version",
		summary: "print the version",
		usage:   "webknock version",
		example: "webknock version",
		run: func(_ context.Context, env *environment, _ *pflag.FlagSet, _ []string) error {
			_, err := fmt.Fprintf(env.stdout, "webknock %s\n", buildVersion())
			return err
		},
	},
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	env := &environment{stdin: stdin, stdout: stdout, stderr: stderr, environ: os.Environ()}
	switch {
	case len(args) == 0: // a usage error, like any other
		printCommands(stderr)
		return exitUsage
	case len(args) > 1 && args[0] == "help": // help COMMAND is COMMAND --help
		args = []string{args[1], "--help"}
	case args[0] == "-h" || args[0] == "--help" || args[0] == "help":
		printCommands(stdout)
		return exitOK
	}
	var cmd *command
	for _, c := range commands {
		if c.name == args[0] {
			cmd = c
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "webknock: unknown command %q\n\n", args[0])
		printCommands(stderr)
		return exitUsage
	}
	fs := pflag.NewFlagSet("webknock "+cmd.name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	if cmd.config {
		fs.StringP("config", "c", "", "configuration `FILE` (YAML)")
	}
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	if len(cmd.overrides) > 0 {
		config.RegisterFlags(fs, cmd.overrides...)
	}
	// pflag calls Usage on -h, to its output (stderr); help is printed
	// once, below, to stdout.
	fs.Usage = func() {}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			printUsage(stdout, cmd, fs)
			return exitOK
		}
		fmt.Fprintf(stderr, "webknock %s: %v\nRun 'webknock %s --help' for usage.\n", cmd.name, err, cmd.name)
		return exitUsage
	}
	err := cmd.run(ctx, env, fs, fs.Args())
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, errReported):
		return exitFail
	default:
		fmt.Fprintf(stderr, "%v\n", err)
		if errors.Is(err, web.ErrNoDaemon) {
			noDaemonHint(stderr, fs, err)
		}
		return exitFail
	}
}

// printUsage prints a command's help.
func printUsage(w io.Writer, cmd *command, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "%s\n\nUsage:\n  %s\n\nExample:\n  %s\n", cmd.summary, cmd.usage, cmd.example)
	if fs.HasFlags() {
		fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
	}
}

func printCommands(w io.Writer) {
	fmt.Fprintln(w, "webknock opens a firewall port to a client that requested a secret sequence of URLs.")
	fmt.Fprintln(w, "\nUsage:\n  webknock COMMAND [flags]\n\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'webknock COMMAND --help' for a command's flags and an example.")
}

// usagef reports a command line mistake.
func usagef(env *environment, fs *pflag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(env.stderr, "%s: %s\nRun '%s --help' for usage.\n", fs.Name(), fmt.Sprintf(format, args...), fs.Name())
	return errUsage
}

// loadConfig loads -c FILE with the environment and flags, validating the
// log format with the parser that will read it, and with check (nil for
// commands that only talk to the daemon or only read logs) the rules of the
// packages that will use it.
func loadConfig(env *environment, fs *pflag.FlagSet, check func(*config.Config) (errs, warns []*config.FieldError)) (*config.Config, error) {
	return loadConfigWith(env, fs, check, false)
}

// loadConfigWith is loadConfig; logsOnCommandLine lets log.paths be empty
// (replay reads the logs it is given).
func loadConfigWith(env *environment, fs *pflag.FlagSet, check func(*config.Config) (errs, warns []*config.FieldError), logsOnCommandLine bool) (*config.Config, error) {
	path, _ := fs.GetString("config")
	if path == "" {
		return nil, usagef(env, fs, "-c FILE is required")
	}
	cfg, err := config.Load(config.Options{
		Path:              path,
		Environ:           env.environ,
		Flags:             fs,
		LogsOnCommandLine: logsOnCommandLine,
		CheckFormat:       weblog.CheckFormat,
		Check: func(cfg *config.Config) (errs, warns []*config.FieldError) {
			// A bad format is log.format's problem, reported by CheckFormat.
			if weblog.CheckFormat(cfg.Log.Format) == nil {
				if _, err := weblog.NewParser(cfg.Log.Format, cfg.Log.TrustedProxies); err != nil {
					errs = append(errs, &config.FieldError{Field: "log.trusted_proxies", Message: err.Error()})
				}
			}
			if check != nil {
				e, w := check(cfg)
				errs, warns = append(errs, e...), append(warns, w...)
			}
			return errs, warns
		},
	})
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// runCheck is `webknock check`: the checks of run, and as root also the
// firewall probe run makes before its first change. Warnings about risky
// choices are printed; they do not fail.
func runCheck(ctx context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	cfg, err := loadConfig(env, fs, checkConfig)
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(env.stderr, "warning: %s\n", w)
	}
	probed := "firewall probed"
	switch {
	case cfg.Firewall.Backend != "dry-run" && os.Geteuid() != 0:
		probed = "firewall not probed (needs root)"
	default:
		if err := firewall.Probe(ctx, firewallOptions(cfg, nil)); err != nil {
			return fmt.Errorf("%s: firewall: %w", cfg.File, err)
		}
	}
	_, err = fmt.Fprintf(env.stdout, "%s: ok: %d sequence(s), log format %q, %s, %d warning(s)\n",
		cfg.File, len(cfg.Sequences), cfg.Log.Format, probed, len(cfg.Warnings))
	return err
}

func buildVersion() string {
	v := version
	info, ok := debug.ReadBuildInfo()
	if v == "" && ok && info.Main.Version != "" {
		v = info.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	if ok {
		v += " " + info.GoVersion
	}
	return v
}
