// Package statedir owns webknock's state directory: one daemon at a time,
// files that only webknock's own user can have written, replaced atomically.
// Every state file (grants, log positions) is read and written through it,
// so the trust rule lives in one place.
package statedir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrUntrusted marks a state directory or file that another user could
// have written: it is refused, never read.
var ErrUntrusted = errors.New("not trusted")

// Check says whether dir can be the state directory without changing
// anything: an absolute path, and if it exists, a directory owned by the
// effective user that no one else may write. A missing directory is fine:
// Prepare creates it.
func Check(dir string) error {
	if dir == "" {
		return errors.New("empty state directory")
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("state directory %q is relative; want an absolute path like /var/lib/webknock", dir)
	}
	return Owned("state directory", dir, false)
}

// Prepare checks dir as Check does and creates it, mode 0700, if missing.
func Prepare(dir string) error {
	if err := Check(dir); err != nil {
		return err
	}
	return Owned("state directory", dir, true)
}

// Owned checks that dir, if it exists, is a directory (not a link) owned by
// the effective user that no one else may write. With create, a missing dir
// is made with mode 0700 (its parents 0755). what names dir in errors.
func Owned(what, dir string, create bool) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) && create {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", what, err)
		}
		fi, err = os.Lstat(dir)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return trusted(what, dir, fi)
}

// trusted refuses what another user owns or may write; what says what
// name is ("state file", "state directory").
func trusted(what, name string, fi fs.FileInfo) error {
	wantDir := what != "state file"
	switch {
	case wantDir && !fi.IsDir():
		return fmt.Errorf("%s %s is not a directory: %w", what, name, ErrUntrusted)
	case !wantDir && !fi.Mode().IsRegular():
		return fmt.Errorf("%s %s is not a regular file (%s): %w", what, name, fi.Mode().Type(), ErrUntrusted)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s %s: no owner information: %w", what, name, ErrUntrusted)
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("%s %s is owned by uid %d, not by webknock's uid %d; chown it or choose another: %w",
			what, name, st.Uid, uid, ErrUntrusted)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %04o: others may write it; chmod go-w it: %w",
			what, name, fi.Mode().Perm(), ErrUntrusted)
	}
	return nil
}

// ReadFile reads a state file of at most max bytes. The file must be a
// regular file (not a link) owned by the effective user and writable by no
// one else; a missing file gives an error that errors.Is fs.ErrNotExist.
func ReadFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("state file %s is a symbolic link: %w", path, ErrUntrusted)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := trusted(fileWhat, path, fi); err != nil {
		return nil, err
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("state file %s has %d bytes, more than %d", path, fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("state file %s has more than %d bytes", path, max)
	}
	return b, nil
}

// fileWhat names state files in errors.
const fileWhat = "state file"

// tempSuffix marks WriteFile's temporary files: path + tempSuffix + random.
const tempSuffix = ".tmp"

// WriteFile replaces path atomically with data, mode 0600: a temporary file
// in the same directory, synced, renamed over the old one, and the directory
// synced, so that a crash leaves either the old or the new file, whole.
func WriteFile(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+tempSuffix+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// RemoveTemps removes the temporary files an interrupted WriteFile left
// beside path, and returns their names.
func RemoveTemps(path string) []string {
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
