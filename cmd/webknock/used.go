package main

// This file holds the state file of one-time sequences, onetime.json in
// state_dir: the last time step of each that granted. It is written before
// the grant is applied, so no restart, re-read log or `start: beginning`
// can make a used step open again.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/webknock/webknock/internal/statedir"
)

const (
	usedFileName     = "onetime.json"
	usedVersion      = 1
	maxUsedFileBytes = 1 << 20
	maxUsedNameLen   = 64
)

// usedStep is the last used time step of one sequence.
type usedStep struct {
	Step   int64      `json:"step"`
	Period int64      `json:"period"` // seconds: the step's length when it was used
	Client netip.Addr `json:"client"` // the address it granted
}

type usedFile struct {
	Version   int                 `json:"version"`
	Sequences map[string]usedStep `json:"sequences"`
}

// parseUsed decodes onetime.json.
func parseUsed(data []byte) (map[string]usedStep, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f usedFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value")
	}
	if f.Version != usedVersion {
		return nil, fmt.Errorf("version %d, want %d", f.Version, usedVersion)
	}
	for name, u := range f.Sequences {
		switch {
		case name == "" || len(name) > maxUsedNameLen:
			return nil, fmt.Errorf("sequence name %q: empty or longer than %d bytes", name, maxUsedNameLen)
		case u.Period < 1 || u.Period > int64(24*time.Hour/time.Second):
			return nil, fmt.Errorf("sequence %q: period %d s out of range", name, u.Period)
		case u.Step < -(1<<50) || u.Step > 1<<50:
			return nil, fmt.Errorf("sequence %q: step %d out of range", name, u.Step)
		}
	}
	if f.Sequences == nil {
		f.Sequences = map[string]usedStep{}
	}
	return f.Sequences, nil
}

// loadUsed reads state_dir's onetime.json; a missing file is no step used.
func loadUsed(stateDir string) (map[string]usedStep, error) {
	path := filepath.Join(stateDir, usedFileName)
	b, err := statedir.ReadFile(path, maxUsedFileBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]usedStep{}, nil
	}
	if err != nil {
		return nil, err
	}
	m, err := parseUsed(b)
	if err != nil {
		return nil, fmt.Errorf("state file %s: %w; if it cannot be repaired, remove it: one-time URLs of the last minutes could then open once more", path, err)
	}
	return m, nil
}

// saveUsed writes m to state_dir's onetime.json, atomically.
func saveUsed(stateDir string, m map[string]usedStep) error {
	b, err := json.Marshal(usedFile{Version: usedVersion, Sequences: m})
	if err != nil {
		return err
	}
	return statedir.WriteFile(filepath.Join(stateDir, usedFileName), append(b, '\n'))
}

// stepFor returns the last used step in steps of period: the newest step
// that overlaps the used one (the period may have changed since).
func (u usedStep) stepFor(period time.Duration) int64 {
	p := int64(period / time.Second)
	if p == u.Period {
		return u.Step
	}
	end := (u.Step+1)*u.Period - 1 // the used step's last second
	t := end / p
	if end%p != 0 && end < 0 {
		t--
	}
	return t
}
