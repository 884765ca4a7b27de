package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one problem in the configuration.
type FieldError struct {
	Source  string // the file, the environment variable or the flag ("--log-format")
	Line    int    // line in the file; 0 when unknown or not from the file
	Field   string // e.g. "sequences[1].steps[0]"; empty for problems of the whole file
	Message string
}

// Error returns "FILE:LINE: field: message", leaving out what is unknown.
func (e *FieldError) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		if e.Line > 0 {
			b.WriteString(":")
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Message)
	return b.String()
}

// Errors is every problem Load found, sorted by source, line and field.
type Errors []*FieldError

// Error returns one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *FieldError.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

func (es Errors) sort() {
	slices.SortStableFunc(es, func(a, b *FieldError) int {
		return cmp.Or(
			cmp.Compare(a.Source, b.Source),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Field, b.Field),
		)
	})
}
