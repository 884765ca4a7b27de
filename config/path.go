package config

import (
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// fieldPath names a value: string keys and int indices.
type fieldPath []any

func (p fieldPath) key(k string) fieldPath { return append(p[:len(p):len(p)], k) }
func (p fieldPath) index(i int) fieldPath  { return append(p[:len(p):len(p)], i) }

// String returns the path as "sequences[1].steps[0]".
func (p fieldPath) String() string {
	var b strings.Builder
	for _, s := range p {
		switch s := s.(type) {
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s)
		case int:
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(s))
			b.WriteByte(']')
		}
	}
	return b.String()
}

// parseFieldPath reads a path written as String writes it.
func parseFieldPath(s string) fieldPath {
	var p fieldPath
	for _, part := range strings.Split(s, ".") {
		name, rest, _ := strings.Cut(part, "[")
		if name != "" {
			p = append(p, name)
		}
		for rest != "" {
			num, after, _ := strings.Cut(rest, "]")
			if i, err := strconv.Atoi(num); err == nil {
				p = append(p, i)
			}
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return p
}

// keyPath returns the path up to its first index ("log.paths" for
// "log.paths[1]"): the granularity at which the environment and flags set values.
func (p fieldPath) keyPath() string {
	for i, s := range p {
		if _, ok := s.(int); ok {
			return p[:i].String()
		}
	}
	return p.String()
}

// maxMergeDepth bounds the search through nested "<<" merge keys.
const maxMergeDepth = 16

// lineOf returns the line of the value at p in the document, or of the
// deepest part of p that exists (a sequence whose knock_page is missing
// points at the sequence); 0 when not even p's first key is there. A key
// points at its key, an item at the item.
func lineOf(doc *yaml.Node, p fieldPath) int {
	if doc == nil {
		return 0
	}
	n, line := doc, 0
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return 0
		}
		n = n.Content[0]
	}
	for _, s := range p {
		n = deref(n)
		switch s := s.(type) {
		case string:
			k, v := findKey(n, s, 0)
			if k == nil {
				return line
			}
			n, line = v, k.Line
		case int:
			if n.Kind != yaml.SequenceNode || s < 0 || s >= len(n.Content) {
				return line
			}
			n = n.Content[s]
			line = n.Line
		}
	}
	return line
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < maxMergeDepth; i++ {
		n = n.Alias
	}
	return n
}

// findKey finds key in mapping n, also in mappings merged in with "<<".
func findKey(n *yaml.Node, key string, depth int) (k, v *yaml.Node) {
	if n.Kind != yaml.MappingNode || depth > maxMergeDepth {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if kn := deref(n.Content[i]); kn.Kind == yaml.ScalarNode && kn.Value == key && kn.Tag != "!!merge" {
			return n.Content[i], n.Content[i+1]
		}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Tag != "!!merge" {
			continue
		}
		m := deref(n.Content[i+1])
		merged := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			merged = m.Content
		}
		for _, mm := range merged {
			if k, v := findKey(deref(mm), key, depth+1); k != nil {
				return k, v
			}
		}
	}
	return nil, nil
}
