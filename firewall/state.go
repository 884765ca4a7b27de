package firewall

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// State file names in StateDir. The dry run keeps its own, so that its
// pretend grants never become real ones when the iptables backend starts.
const (
	stateFile       = "grants.json"
	dryRunStateFile = "grants-dry-run.json"
	stateVersion    = 1
)

type stateDoc struct {
	Version int     `json:"version"`
	Grants  []Grant `json:"grants"`
}

// loadState reads the grants of a state file. A missing file is an error
// that errors.Is(err, fs.ErrNotExist); any grant that is not valid makes the
// whole file unreadable, since it cannot be trusted.
func loadState(path string) ([]Grant, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc stateDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if doc.Version != stateVersion {
		return nil, fmt.Errorf("read %s: version %d, want %d", path, doc.Version, stateVersion)
	}
	out := make([]Grant, 0, len(doc.Grants))
	for i, g := range doc.Grants {
		n, err := normalizeGrant(g)
		if err != nil {
			return nil, fmt.Errorf("read %s: grants[%d]: %w", path, i, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// saveState replaces the state file atomically: a temporary file in the same
// directory, synced, renamed over the old one, and the directory synced, so
// that a crash leaves either the old or the new file, whole.
func saveState(path string, gs []Grant) error {
	if gs == nil {
		gs = []Grant{}
	}
	b, err := json.MarshalIndent(stateDoc{Version: stateVersion, Grants: gs}, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+tempSuffix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		done = true
		return fmt.Errorf("write %s: %w", path, err)
	}
	done = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// tempSuffix marks saveState's temporary files: path + tempSuffix + random.
const tempSuffix = ".tmp"

// removeTemps removes the temporary files a killed saveState left beside
// path, and returns their names. loadState never reads them; they would
// only pile up.
func removeTemps(path string) []string {
	dir, prefix := filepath.Dir(path), filepath.Base(path)+tempSuffix
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if os.Remove(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}
