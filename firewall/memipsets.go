package firewall

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
)

// The ipsets of memTables: sets of grant elements in memory, for the
// dry-run backend, which logs each change, and the tests. The kernel's
// timeouts are not modelled: an element stays until it is deleted.

// memSet is one set.
type memSet struct {
	typ   string
	elems map[ipsetElem]ipsetElem // by key
}

var _ ipsets = (*memTables)(nil)

// Sets returns m itself: its sets live next to its chains.
func (m *memTables) Sets() ipsets { return m }

// setBegin asks the fail hook, as begin does for chains, and locks m. The
// hook sees op "ipset-add" and the like, the set's name for the chain, and
// each element and its port number for the specification.
func (m *memTables) setBegin(ctx context.Context, op, name string, els ...ipsetElem) error {
	m.mu.Lock()
	fail := m.fail
	m.mu.Unlock()
	var err error
	if fail != nil {
		var spec []string
		for _, el := range els {
			spec = append(spec, el.String(), strconv.Itoa(int(el.port.Number)))
		}
		err = fail(ctx, op, name, spec)
	}
	m.mu.Lock()
	return err
}

// setChanged logs a change for the dry run.
func (m *memTables) setChanged(what string) {
	if m.log != nil {
		m.log.Info("dry-run", keyCommand, "ipset "+what)
	}
}

func (m *memTables) create(ctx context.Context, spec ipsetSpec) error {
	err := m.setBegin(ctx, "ipset-create", spec.name)
	defer m.mu.Unlock()
	if err != nil {
		return err
	}
	if s := m.sets[spec.name]; s != nil {
		if s.typ != spec.typ {
			return fmt.Errorf("ipset %s exists with type %s, not %s: not webknock's", spec.name, s.typ, spec.typ)
		}
		return nil
	}
	if m.sets == nil {
		m.sets = map[string]*memSet{}
	}
	m.sets[spec.name] = &memSet{typ: spec.typ, elems: map[ipsetElem]ipsetElem{}}
	m.setChanged(fmt.Sprintf("create %s %s family %s timeout 0 comment", spec.name, spec.typ, map[family]string{ipv4: "inet", ipv6: "inet6"}[spec.fam]))
	return nil
}

func (m *memTables) set(op, name string) (*memSet, error) {
	s := m.sets[name]
	if s == nil {
		return nil, fmt.Errorf("ipset %s %s: %w: The set with the given name does not exist", op, name, errNoChain)
	}
	return s, nil
}

func (m *memTables) count(ctx context.Context, name string) (string, int, error) {
	err := m.setBegin(ctx, "ipset-count", name)
	defer m.mu.Unlock()
	if err != nil {
		return "", 0, err
	}
	s, err := m.set("list", name)
	if err != nil {
		return "", 0, err
	}
	return s.typ, len(s.elems), nil
}

func (m *memTables) list(ctx context.Context, name string) (string, []ipsetElem, error) {
	err := m.setBegin(ctx, "ipset-list", name)
	defer m.mu.Unlock()
	if err != nil {
		return "", nil, err
	}
	s, err := m.set("list", name)
	if err != nil {
		return "", nil, err
	}
	els := make([]ipsetElem, 0, len(s.elems))
	for _, el := range s.elems {
		els = append(els, el)
	}
	slices.SortFunc(els, func(a, b ipsetElem) int {
		return cmp.Or(a.src.Addr().Compare(b.src.Addr()), cmp.Compare(a.src.Bits(), b.src.Bits()),
			cmp.Compare(a.port.Proto, b.port.Proto), cmp.Compare(a.port.Number, b.port.Number))
	})
	return s.typ, els, nil
}

func (m *memTables) put(ctx context.Context, name string, els []ipsetElem) error {
	err := m.setBegin(ctx, "ipset-add", name, els...)
	defer m.mu.Unlock()
	if err != nil {
		return err
	}
	s, err := m.set("add to", name)
	if err != nil {
		return err
	}
	for _, el := range els {
		if el.src.IsSingleIP() != (s.typ == ipsetHosts) || familyOf(el.src.Addr()) != m.fam {
			return fmt.Errorf("ipset add %s to %s: element does not fit the set's type %s", el, name, s.typ)
		}
		s.elems[el.key()] = el
		m.setChanged(fmt.Sprintf("add -exist %s %s timeout %d comment %q", name, el, el.timeout, el.comment))
	}
	return nil
}

func (m *memTables) remove(ctx context.Context, name string, els []ipsetElem) error {
	err := m.setBegin(ctx, "ipset-del", name, els...)
	defer m.mu.Unlock()
	if err != nil {
		return err
	}
	s, err := m.set("delete from", name)
	if err != nil {
		return err
	}
	for _, el := range els {
		if _, ok := s.elems[el.key()]; ok {
			delete(s.elems, el.key())
			m.setChanged(fmt.Sprintf("del %s %s", name, el))
		}
	}
	return nil
}

func (m *memTables) destroy(ctx context.Context, name string) error {
	err := m.setBegin(ctx, "ipset-destroy", name)
	defer m.mu.Unlock()
	if err != nil {
		return err
	}
	if m.sets[name] == nil {
		return nil
	}
	for c, ch := range m.chains {
		for _, r := range ch.rules {
			if ru, ok := parseRule(splitOrNil(r)); ok && ru.kind == kindSet && ru.set == name {
				return fmt.Errorf("ipset destroy %s: Set cannot be destroyed: it is in use by a kernel component (chain %s)", name, c)
			}
		}
	}
	delete(m.sets, name)
	m.setChanged("destroy " + name)
	return nil
}

// splitOrNil splits a printed rule, nil when it does not split.
func splitOrNil(r string) []string {
	w, err := splitRule(r)
	if err != nil {
		return nil
	}
	return w
}

func (m *memTables) close() {}
