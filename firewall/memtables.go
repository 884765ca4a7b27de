package firewall

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// memTables is an in-memory table filter of one family that behaves like
// iptables for the calls firewall makes: List prints what `iptables -S`
// prints (with the implicit `-m tcp` and quoted comments), rules are matched
// by their printed form, a chain that is jumped to cannot be deleted. It is
// the dry-run backend, which logs each change, and the tests' fake.
type memTables struct {
	fam family
	log *slog.Logger // nil: changes are not logged

	mu     sync.Mutex
	chains map[string]*memChain
	sets   map[string]*memSet

	// For the tests. fail, when set, is asked before each call, outside
	// the lock (it may block, as a hung iptables would); an error it
	// returns is the call's result, and the call changes nothing. With
	// record, history keeps each change with the chain's rules after it.
	fail    func(ctx context.Context, op, chain string, spec []string) error
	record  bool
	history []memChange
}

type memChain struct {
	builtin bool
	rules   []string // as printed after "-A CHAIN "
}

type memChange struct {
	op, chain string
	rules     []string
}

var _ tables = (*memTables)(nil)

// newMemTables returns a table filter with the built-in chains and the user
// chains named in extra (a hook such as DOCKER-USER that the dry run pretends
// exists).
func newMemTables(fam family, log *slog.Logger, extra ...string) *memTables {
	m := &memTables{fam: fam, log: log, chains: map[string]*memChain{}}
	for _, c := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		m.chains[c] = &memChain{builtin: true}
	}
	for _, c := range extra {
		if m.chains[c] == nil {
			m.chains[c] = &memChain{}
		}
	}
	return m
}

type memError struct {
	cmd, msg string
}

const msgNoChain = "No chain/target/match by that name."

func (e *memError) Error() string { return fmt.Sprintf("running %s: %s", e.cmd, e.msg) }

const msgIndex = "Index of insertion too big."

// Is makes the missing chain errNoChain and an insert past the end
// errEmptyChain, as execTables does.
func (e *memError) Is(target error) bool {
	return (target == errNoChain && e.msg == msgNoChain) || (target == errEmptyChain && e.msg == msgIndex)
}

func (m *memTables) cmd(args ...string) string {
	return m.fam.command() + " -t " + table + " " + strings.Join(args, " ")
}

// begin asks the fail hook, locks m, and checks the table and the chain.
// It returns with m locked, whatever the error.
func (m *memTables) begin(ctx context.Context, op, tbl, chain string, spec []string, args ...string) (*memChain, error) {
	m.mu.Lock()
	fail := m.fail
	m.mu.Unlock()
	if fail != nil {
		if err := fail(ctx, op, chain, spec); err != nil {
			m.mu.Lock()
			return nil, err
		}
	}
	m.mu.Lock()
	if tbl != table {
		return nil, &memError{m.cmd(args...), "can't initialize table `" + tbl + "'"}
	}
	c := m.chains[chain]
	switch op {
	case "newchain", "chainexists", "clearanddelete", "exists", "deleteifexists":
	default:
		if c == nil {
			return nil, &memError{m.cmd(args...), msgNoChain}
		}
	}
	return c, nil
}

// changed records and, for the dry run, logs a change.
func (m *memTables) changed(op, chain string, args ...string) {
	if m.record {
		var rules []string
		if c := m.chains[chain]; c != nil {
			rules = slices.Clone(c.rules)
		}
		m.history = append(m.history, memChange{op: op, chain: chain, rules: rules})
	}
	if m.log != nil {
		m.log.Info("dry-run", keyCommand, m.cmd(args...))
	}
}

// canon turns a rule specification into the form `iptables -S` prints.
func (m *memTables) canon(cmd string, spec []string) (string, error) {
	var out []string
	proto, protoMatch := "", false
	bad := func(msg string) (string, error) { return "", &memError{cmd, msg} }
	for i := 0; i < len(spec); i++ {
		w := spec[i]
		if strings.HasPrefix(w, "-") && w != "!" {
			if i+1 >= len(spec) {
				return bad("option \"" + w + "\" requires an argument")
			}
		}
		switch w {
		case "-s", "-d":
			v := spec[i+1]
			i++
			if !strings.Contains(v, "/") {
				v += "/" + strconv.Itoa(map[family]int{ipv4: 32, ipv6: 128}[m.fam])
			}
			p, err := netip.ParsePrefix(v)
			if err != nil || familyOf(p.Addr()) != m.fam || p.Addr().Is4In6() {
				return bad("host/network `" + spec[i] + "' not found")
			}
			out = append(out, w, p.Masked().String())
		case "-p":
			proto = spec[i+1]
			i++
			out = append(out, w, proto)
		case "-m":
			protoMatch = protoMatch || spec[i+1] == proto
			out = append(out, w, spec[i+1])
			i++
		case "--dport", "--sport":
			if proto != "tcp" && proto != "udp" {
				return bad("unknown option \"" + w + "\"")
			}
			if !protoMatch {
				out = append(out, "-m", proto)
				protoMatch = true
			}
			out = append(out, w, spec[i+1])
			i++
		case "--comment":
			out = append(out, w, `"`+strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(spec[i+1])+`"`)
			i++
		case "-j":
			t := spec[i+1]
			i++
			switch t {
			case "ACCEPT", "DROP", "REJECT", "RETURN", "LOG":
			default:
				if c := m.chains[t]; c == nil || c.builtin {
					return bad("Couldn't load target `" + t + "'")
				}
			}
			out = append(out, w, t)
		default:
			out = append(out, w)
		}
	}
	return strings.Join(out, " "), nil
}

func (m *memTables) List(ctx context.Context, tbl, chain string) ([]string, error) {
	c, err := m.begin(ctx, "list", tbl, chain, nil, "-S", chain)
	defer m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(c.rules)+1)
	if c.builtin {
		out = append(out, "-P "+chain+" ACCEPT")
	} else {
		out = append(out, "-N "+chain)
	}
	for _, r := range c.rules {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (m *memTables) ChainExists(ctx context.Context, tbl, chain string) (bool, error) {
	c, err := m.begin(ctx, "chainexists", tbl, chain, nil, "-S", chain, "1")
	defer m.mu.Unlock()
	return c != nil, err
}

func (m *memTables) NewChain(ctx context.Context, tbl, chain string) error {
	args := []string{"-N", chain}
	c, err := m.begin(ctx, "newchain", tbl, chain, nil, args...)
	defer m.mu.Unlock()
	switch {
	case err != nil:
		return err
	case c != nil:
		return &memError{m.cmd(args...), "Chain already exists."}
	}
	m.chains[chain] = &memChain{}
	m.changed("newchain", chain, args...)
	return nil
}

func (m *memTables) ClearAndDeleteChain(ctx context.Context, tbl, chain string) error {
	args := []string{"-X", chain}
	c, err := m.begin(ctx, "clearanddelete", tbl, chain, nil, args...)
	defer m.mu.Unlock()
	if err != nil || c == nil {
		return err
	}
	if c.builtin {
		return &memError{m.cmd(args...), "Can't delete built-in chain"}
	}
	for name, other := range m.chains {
		for _, r := range other.rules {
			if strings.HasSuffix(r, "-j "+chain) || strings.Contains(r, "-j "+chain+" ") {
				return &memError{m.cmd(args...), "CHAIN_DEL failed (Device or resource busy): chain " + chain + " (jumped to from " + name + ")"}
			}
		}
	}
	delete(m.chains, chain)
	m.changed("clearanddelete", chain, args...)
	return nil
}

func (m *memTables) Exists(ctx context.Context, tbl, chain string, spec ...string) (bool, error) {
	args := append([]string{"-C", chain}, spec...)
	c, err := m.begin(ctx, "exists", tbl, chain, spec, args...)
	defer m.mu.Unlock()
	if err != nil || c == nil { // iptables -C: exit status 1, as for a missing rule
		return false, err
	}
	r, err := m.canon(m.cmd(args...), spec)
	if err != nil {
		return false, err
	}
	return slices.Contains(c.rules, r), nil
}

func (m *memTables) Insert(ctx context.Context, tbl, chain string, pos int, spec ...string) error {
	return m.add(ctx, tbl, chain, pos, spec, append([]string{"-I", chain, strconv.Itoa(pos)}, spec...))
}

func (m *memTables) Append(ctx context.Context, tbl, chain string, spec ...string) error {
	return m.add(ctx, tbl, chain, 0, spec, append([]string{"-A", chain}, spec...))
}

// add puts a rule at position pos (1-based), or at the end when pos is 0.
func (m *memTables) add(ctx context.Context, tbl, chain string, pos int, spec, args []string) error {
	op := "insert"
	if pos == 0 {
		op = "append"
	}
	c, err := m.begin(ctx, op, tbl, chain, spec, args...)
	defer m.mu.Unlock()
	if err != nil {
		return err
	}
	r, err := m.canon(m.cmd(args...), spec)
	if err != nil {
		return err
	}
	if pos == 0 {
		pos = len(c.rules) + 1
	}
	if pos < 1 || pos > len(c.rules)+1 {
		return &memError{m.cmd(args...), msgIndex}
	}
	c.rules = slices.Insert(c.rules, pos-1, r)
	m.changed(op, chain, args...)
	return nil
}

func (m *memTables) Delete(ctx context.Context, tbl, chain string, spec ...string) error {
	return m.delete(ctx, "delete", tbl, chain, spec, false)
}

func (m *memTables) DeleteIfExists(ctx context.Context, tbl, chain string, spec ...string) error {
	return m.delete(ctx, "deleteifexists", tbl, chain, spec, true)
}

func (m *memTables) delete(ctx context.Context, op, tbl, chain string, spec []string, ifExists bool) error {
	args := append([]string{"-D", chain}, spec...)
	c, err := m.begin(ctx, op, tbl, chain, spec, args...)
	defer m.mu.Unlock()
	switch {
	case err != nil:
		return err
	case c == nil && ifExists:
		return nil
	case c == nil:
		return &memError{m.cmd(args...), msgNoChain}
	}
	r, err := m.canon(m.cmd(args...), spec)
	if err != nil {
		return err
	}
	i := slices.Index(c.rules, r)
	if i < 0 {
		if ifExists {
			return nil
		}
		return &memError{m.cmd(args...), "Bad rule (does a matching rule exist in that chain?)."}
	}
	c.rules = slices.Delete(c.rules, i, i+1)
	m.changed(op, chain, args...)
	return nil
}

func (m *memTables) DeleteById(ctx context.Context, tbl, chain string, id int) error {
	args := []string{"-D", chain, strconv.Itoa(id)}
	c, err := m.begin(ctx, "deletebyid", tbl, chain, nil, args...)
	defer m.mu.Unlock()
	if err != nil {
		return err
	}
	if id < 1 || id > len(c.rules) {
		return &memError{m.cmd(args...), "Index of deletion too big."}
	}
	c.rules = slices.Delete(c.rules, id-1, id)
	m.changed("deletebyid", chain, args...)
	return nil
}
