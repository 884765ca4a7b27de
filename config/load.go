package config

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
	yamlv3 "go.yaml.in/yaml/v3"
)

// envPrefix starts every environment variable Load reads.
const envPrefix = "WEBKNOCK_"

// envKeys are the keys the environment may set; true marks a list, whose
// variable is split on spaces and commas.
var envKeys = map[string]bool{
	"log.paths":             true,
	"log.format":            false,
	"log.start":             false,
	"log.trusted_proxies":   true,
	"state_dir":             false,
	"firewall.backend":      false,
	"firewall.chain":        false,
	"firewall.table":        false,
	"firewall.hook":         false,
	"firewall.protect":      false,
	"firewall.always_allow": true,
	"firewall.ipv6":         false,
	"lockout.failures":      false,
	"lockout.period":        false,
	"lockout.duration":      false,
	"web.listen":            false,
	"web.token_file":        false,
	"web.socket":            false,
	"hooks.on_grant":        true,
	"hooks.on_end":          true,
	"hooks.on_lockout":      true,
	"hooks.timeout":         false,
	"hooks.max_running":     false,

	"firewall.max_grants":              false,
	"firewall.max_grants_per_sequence": false,
	"firewall.max_grants_per_ipv4_24":  false,
	"firewall.max_grants_per_ipv6_64":  false,
	"firewall.check_interval":          false,
}

// envArgv are the list keys that hold a command: their variable is a YAML
// flow list ('["/usr/bin/logger", "-t", "webknock", "{ip} {event}"]'), or
// else split on spaces only, since an argument may hold a comma.
var envArgv = map[string]bool{"hooks.on_grant": true, "hooks.on_end": true, "hooks.on_lockout": true}

// source is where a value came from.
type source struct {
	name string // file path, variable name or "--flag"
	file bool
}

// loc is a value's source and field path.
type loc struct {
	src source
	p   fieldPath
}

func (a loc) key(k string) loc { return loc{a.src, a.p.key(k)} }
func (a loc) index(i int) loc  { return loc{a.src, a.p.index(i)} }

// loader accumulates the configuration layer by layer and every problem found.
type loader struct {
	cfg    Config
	file   source
	doc    *yamlv3.Node      // the file's node tree, for line numbers; nil if unparsable
	origin map[string]source // keyPath -> source of its current value, when not the file
	failed map[string]bool   // paths that could not be decoded: no further checks
	broken bool              // the file could not be read or parsed: nothing to validate
	errs   Errors
	// logsOnCommandLine: see Options.LogsOnCommandLine.
	logsOnCommandLine bool
}

// Load reads the configuration described by o and validates it. On any
// problem it returns nil and an Errors listing all of them.
func Load(o Options) (*Config, error) {
	l := &loader{
		cfg:    defaults(),
		file:   source{name: o.Path, file: true},
		origin: map[string]source{},
		failed: map[string]bool{},

		logsOnCommandLine: o.LogsOnCommandLine,
	}
	l.cfg.File = o.Path
	if o.Path == "" {
		l.errs = append(l.errs, &FieldError{Message: "no configuration file given"})
		return nil, l.errs
	}

	// ko holds the layers merged so far, so posflag can see what is set.
	ko := koanf.New(".")
	l.loadFile()
	l.loadEnv(ko, o.Environ)
	if o.Flags != nil {
		l.loadFlags(ko, o.Flags)
	}
	if !l.broken {
		l.validate(o.CheckFormat)
	}
	if !l.broken && o.Check != nil {
		errs, warnings := o.Check(&l.cfg)
		for _, e := range errs {
			if !l.skipped(parseFieldPath(e.Field)) { // reported already
				l.errs = append(l.errs, l.place(e))
			}
		}
		for _, w := range warnings {
			l.cfg.Warnings = append(l.cfg.Warnings, l.place(w))
		}
		Errors(l.cfg.Warnings).sort()
	}

	if len(l.errs) > 0 {
		l.errs.sort()
		return nil, l.errs
	}
	c := l.cfg
	return &c, nil
}

// addf records a problem at a.
func (l *loader) addf(a loc, format string, args ...any) {
	e := &FieldError{Source: a.src.name, Field: a.p.String(), Message: fmt.Sprintf(format, args...)}
	if a.src.file {
		e.Line = lineOf(l.doc, a.p)
	}
	l.errs = append(l.errs, e)
}

// place fills in where the value of e.Field came from: its source and,
// for the file, its line.
func (l *loader) place(e *FieldError) *FieldError {
	out := *e
	if out.Source != "" || out.Field == "" {
		if out.Source == "" {
			out.Source = l.file.name
		}
		return &out
	}
	p := parseFieldPath(out.Field)
	src := l.sourceOf(p)
	out.Source = src.name
	if src.file {
		out.Line = lineOf(l.doc, p)
	}
	return &out
}

// failf records a problem with a value that could not be decoded; later
// checks of that value (and of what it contains) are skipped.
func (l *loader) failf(a loc, format string, args ...any) {
	l.addf(a, format, args...)
	l.failed[a.p.String()] = true
}

func (l *loader) loadFile() {
	whole := loc{src: l.file}
	l.broken = true
	b, err := file.Provider(l.file.name).ReadBytes()
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		l.addf(whole, "cannot read: %v", err)
		return
	}
	var doc yamlv3.Node
	if err := yamlv3.Unmarshal(b, &doc); err != nil {
		l.yamlProblems(err)
		return
	}
	l.doc = &doc
	if len(doc.Content) > 0 {
		if top := deref(doc.Content[0]); top.Kind != yamlv3.MappingNode && top.Tag != "!!null" {
			e := &FieldError{Source: l.file.name, Line: top.Line,
				Message: "want a mapping of sections (log, state_dir, firewall, sequences, lockout, web), got " + kindName(top)}
			l.errs = append(l.errs, e)
			return
		}
	}
	// The values come from the node tree already parsed: parsing the bytes
	// again, or copying the result into koanf, would triple the cost of a
	// file with thousands of sequences. The environment and flags, which
	// set only some keys of the sections, decode over these values.
	untime(&doc)
	var root map[string]any
	if err := doc.Decode(&root); err != nil {
		l.yamlProblems(err)
		return
	}
	l.broken = false
	l.decodeRoot(loc{src: l.file}, root)
}

// untime makes every scalar that YAML would read as a timestamp a string:
// times are parsed by our own rule, strictly (a date alone has no zone).
func untime(n *yamlv3.Node) {
	if n.Kind == yamlv3.ScalarNode && n.ShortTag() == "!!timestamp" {
		n.Tag = "!!str"
	}
	for _, c := range n.Content {
		untime(c)
	}
}

var yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// parserProblems are the messages of yaml.v3's parser (as opposed to its
// scanner) errors, whose line it reports counting from 0, leaving out line 0.
var parserProblems = []string{
	"did not find expected <stream-start>",
	"did not find expected <document start>",
	"did not find expected node content",
	"did not find expected key",
	"did not find expected '-' indicator",
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found duplicate %TAG directive",
	"found undefined tag handle",
}

// scannerPrefixes start yaml.v3's scanner messages, which leave out line 1.
var scannerPrefixes = []string{
	"found ", "did not find ", "could not find ",
	"mapping keys are not allowed", "mapping values are not allowed", "block sequence entries are not allowed",
}

// yamlProblems turns a YAML parse error into problems with line numbers.
func (l *loader) yamlProblems(err error) {
	if te := (*yamlv3.TypeError)(nil); errors.As(err, &te) {
		for _, m := range te.Errors {
			e := &FieldError{Source: l.file.name, Message: "bad YAML: " + m}
			if sub := yamlLine.FindStringSubmatch(m); sub != nil {
				e.Line, _ = strconv.Atoi(sub[1])
				e.Message = "bad YAML: " + sub[2]
			}
			l.errs = append(l.errs, e)
		}
		return
	}
	m := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if sub := yamlLine.FindStringSubmatch(m); sub != nil {
		line, _ = strconv.Atoi(sub[1])
		m = sub[2]
	}
	switch {
	case slices.Contains(parserProblems, m):
		line++
	case line == 0 && slices.ContainsFunc(scannerPrefixes, func(p string) bool { return strings.HasPrefix(m, p) }):
		line = 1
	}
	l.errs = append(l.errs, &FieldError{Source: l.file.name, Line: line, Message: "bad YAML: " + m})
}

func kindName(n *yamlv3.Node) string {
	switch n.Kind {
	case yamlv3.SequenceNode:
		return "a list"
	case yamlv3.MappingNode:
		return "a mapping"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

// loadEnv applies WEBKNOCK_SECTION__KEY variables.
func (l *loader) loadEnv(ko *koanf.Koanf, environ []string) {
	vars := map[string]source{} // key -> variable
	p := env.Provider(".", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			src := source{name: name}
			rest := strings.TrimPrefix(name, envPrefix)
			key := strings.ReplaceAll(strings.ToLower(rest), "__", ".")
			list, known := envKeys[key]
			switch {
			case key == "":
				l.addf(loc{src: src}, "names no key; want %sSECTION__KEY, e.g. %sLOG__FORMAT", envPrefix, envPrefix)
				return "", nil
			case key == "sequences" || strings.HasPrefix(key, "sequences."):
				l.addf(loc{src, fieldPath{"sequences"}}, "cannot be set from the environment; define sequences in the file")
				return "", nil
			case !known || strings.Contains(rest, "."):
				l.addf(loc{src, fieldPath{key}}, "unknown key")
				return "", nil
			}
			if envArgv[key] {
				argv, err := envCommand(value)
				if err != nil {
					l.addf(loc{src, parseFieldPath(key)}, "%v", err)
					return "", nil
				}
				vars[key] = src
				return key, argv
			}
			vars[key] = src
			if list {
				return key, strings.FieldsFunc(value, func(r rune) bool {
					return r == ',' || r == ' ' || r == '\t' || r == '\n'
				})
			}
			return key, value
		},
	})
	ek := koanf.New(".")
	if err := ek.Load(p, nil); err != nil {
		l.addf(loc{src: source{name: "environment"}}, "cannot read: %v", err)
		return
	}
	l.decodeLayer(ek, vars)
	_ = ko.Merge(ek)
}

// envCommand reads a command from an environment variable.
func envCommand(value string) ([]any, error) {
	if !strings.HasPrefix(strings.TrimSpace(value), "[") {
		var argv []any
		for _, f := range strings.Fields(value) {
			argv = append(argv, f)
		}
		return argv, nil
	}
	var argv []any
	if err := yamlv3.Unmarshal([]byte(value), &argv); err != nil {
		return nil, fmt.Errorf("bad list: want a command like [\"/usr/bin/logger\", \"-t\", \"webknock\"]: %v", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return argv, nil
}

// loadFlags applies the flags of RegisterFlags that the user changed.
func (l *loader) loadFlags(ko *koanf.Koanf, fs *pflag.FlagSet) {
	flags := map[string]source{} // key -> flag
	p := posflag.ProviderWithFlag(fs, ".", ko, func(f *pflag.Flag) (string, any) {
		key, ok := flagKeys[f.Name]
		if !ok || !f.Changed {
			return "", nil
		}
		flags[key] = source{name: "--" + f.Name}
		return key, posflag.FlagVal(fs, f)
	})
	fk := koanf.New(".")
	if err := fk.Load(p, nil); err != nil {
		l.addf(loc{src: source{name: "flags"}}, "cannot read: %v", err)
		return
	}
	l.decodeLayer(fk, flags)
	_ = ko.Merge(fk)
}

// decodeLayer decodes a layer in which every key was set by its own source:
// one variable or flag.
func (l *loader) decodeLayer(k *koanf.Koanf, srcs map[string]source) {
	for _, key := range slices.Sorted(maps.Keys(srcs)) {
		var p fieldPath
		for _, s := range strings.Split(key, ".") {
			p = p.key(s)
		}
		l.decodeKey(loc{srcs[key], p}, k.Get(key))
	}
}

// decodeKey decodes one env or flag value at its top-level or section key.
func (l *loader) decodeKey(a loc, v any) {
	root := map[string]any{}
	// Rebuild the nesting so the one decoder serves every layer.
	cur := root
	for i, s := range a.p {
		k, _ := s.(string)
		if i == len(a.p)-1 {
			cur[k] = v
			break
		}
		next := map[string]any{}
		cur[k] = next
		cur = next
	}
	l.decodeRoot(loc{src: a.src}, root)
}
