package firewall

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// execTables runs iptables (or ip6tables) for each call. It does what
// go-iptables does, but under a context: when the context ends, the
// process group of the call is killed, so that a hung iptables (or a
// wrapper script and its children) cannot hold the worker.
type execTables struct {
	fam  family
	path string
	wait []string // "-w N": how long iptables waits for the xtables lock
	sets ipsets   // the kernel's ipsets
}

func (t *execTables) Sets() ipsets { return t.sets }

var _ tables = (*execTables)(nil)

// killDelay bounds how long a killed call waits for its output pipes to
// close, should a grandchild hold them.
const killDelay = time.Second

// execError is an iptables run that exited with a failure.
type execError struct {
	cmd    string
	status int // -1: killed by a signal
	stderr string
	kind   error // errNoChain, errLocked, errEmptyChain or nil
}

func (e *execError) Error() string {
	return fmt.Sprintf("running %s: exit status %d: %s", e.cmd, e.status, e.stderr)
}

func (e *execError) Unwrap() error { return e.kind }

// notExist tells whether a failed -D found no such rule or chain. Unlike
// go-iptables' IsNotExist, a match that cannot load ("No such file or
// directory") is a failure: the rule may well be there.
func (e *execError) notExist() bool {
	return e.kind == errNoChain || (e.status == 1 && strings.Contains(e.stderr, "Bad rule (does a matching rule exist in that chain?)"))
}

// run runs the program with args; stdout, if not nil, gets its output.
func (t *execTables) run(ctx context.Context, stdout *bytes.Buffer, args ...string) error {
	argv := append(append([]string{}, t.wait...), args...)
	cmd := exec.CommandContext(ctx, t.path, argv...)
	// Its own process group, so that a timeout kills a wrapper's children
	// too; and killed with webknock, so that a call of a daemon that died
	// (kill -9) cannot finish after the next one has reconciled the chain.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = killDelay
	var stderr bytes.Buffer
	if stdout != nil {
		cmd.Stdout = stdout
	}
	cmd.Stderr = &stderr
	err := cmd.Start()
	if err == nil {
		rememberPID(cmd.Process.Pid)
		err = cmd.Wait()
	}
	if err == nil {
		return nil
	}
	line := t.fam.command() + " " + strings.Join(argv, " ")
	if ctx.Err() != nil {
		return fmt.Errorf("running %s: %w", line, ctx.Err())
	}
	ee, ok := err.(*exec.ExitError)
	if !ok {
		return fmt.Errorf("running %s: %w", line, err)
	}
	e := &execError{cmd: line, status: ee.ExitCode(), stderr: strings.TrimSpace(stderr.String())}
	switch {
	case e.status == 4 && strings.Contains(e.stderr, "xtables lock"):
		e.kind = errLocked
	case strings.Contains(e.stderr, "No chain/target/match by that name") || strings.Contains(e.stderr, "does not exist"):
		e.kind = errNoChain
	case strings.Contains(e.stderr, "Index of insertion too big"):
		e.kind = errEmptyChain
	}
	return e
}

// counterRe is the packet and byte counter some iptables-nft versions put
// before each rule of -S.
var counterRe = regexp.MustCompile(`^\[[0-9]+:[0-9]+\] `)

func (t *execTables) List(ctx context.Context, table, chain string) ([]string, error) {
	var out bytes.Buffer
	err := t.run(ctx, &out, "-t", table, "-S", chain)
	if e, ok := err.(*execError); ok && e.status == 1 {
		// iptables-nft 1.8.9 says "incompatible" for a missing chain;
		// exit status 1 on -S means no such chain in every version.
		e.kind = errNoChain
	}
	if err != nil {
		return nil, err
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) == 1 && lines[0] == "" {
		return nil, nil
	}
	for i, l := range lines {
		lines[i] = counterRe.ReplaceAllString(l, "")
	}
	return lines, nil
}

func (t *execTables) ChainExists(ctx context.Context, table, chain string) (bool, error) {
	// An index lists one rule at most, whatever the chain holds.
	err := t.run(ctx, nil, "-t", table, "-S", chain, "1")
	if e, ok := err.(*execError); ok && e.status == 1 {
		return false, nil
	}
	return err == nil, err
}

func (t *execTables) NewChain(ctx context.Context, table, chain string) error {
	return t.run(ctx, nil, "-t", table, "-N", chain)
}

func (t *execTables) ClearAndDeleteChain(ctx context.Context, table, chain string) error {
	ok, err := t.ChainExists(ctx, table, chain)
	if err != nil || !ok {
		return err
	}
	if err := t.run(ctx, nil, "-t", table, "-F", chain); err != nil {
		return err
	}
	return t.run(ctx, nil, "-t", table, "-X", chain)
}

func (t *execTables) Exists(ctx context.Context, table, chain string, spec ...string) (bool, error) {
	err := t.run(ctx, nil, append([]string{"-t", table, "-C", chain}, spec...)...)
	if e, ok := err.(*execError); ok && e.status == 1 {
		return false, nil
	}
	return err == nil, err
}

func (t *execTables) Insert(ctx context.Context, table, chain string, pos int, spec ...string) error {
	return t.run(ctx, nil, append([]string{"-t", table, "-I", chain, strconv.Itoa(pos)}, spec...)...)
}

func (t *execTables) Append(ctx context.Context, table, chain string, spec ...string) error {
	return t.run(ctx, nil, append([]string{"-t", table, "-A", chain}, spec...)...)
}

func (t *execTables) Delete(ctx context.Context, table, chain string, spec ...string) error {
	return t.run(ctx, nil, append([]string{"-t", table, "-D", chain}, spec...)...)
}

// DeleteIfExists deletes with one run, not go-iptables' -C then -D: a
// missing rule or chain is success.
func (t *execTables) DeleteIfExists(ctx context.Context, table, chain string, spec ...string) error {
	err := t.Delete(ctx, table, chain, spec...)
	if e, ok := err.(*execError); ok && e.notExist() {
		return nil
	}
	return err
}

func (t *execTables) DeleteById(ctx context.Context, table, chain string, id int) error {
	return t.run(ctx, nil, "-t", table, "-D", chain, strconv.Itoa(id))
}
