package hook

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// CheckProgram applies the one rule for a hook's program, in `check`, at
// the start and reload of `run`, and again before every run: webknock runs
// it as its own user (root), so nobody else may be able to change what it
// runs. The program must be an absolute path to a regular executable file
// (a link to one is followed) owned by root or webknock's user and
// writable by no one else, in directories of the same owners that no one
// else may write to, unless they are sticky like /tmp (where others cannot
// rename or remove it).
func CheckProgram(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("hook program %q is not an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("hook program: %w", err)
	}
	switch {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("hook program %s is not a regular file (%s)", path, fi.Mode().Type())
	case fi.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("hook program %s is not executable (mode %04o); chmod 755 it", path, fi.Mode().Perm())
	}
	if err := checkOwner(fi); err != nil {
		return fmt.Errorf("hook program %s %w; chown root it", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("hook program %s has mode %04o: other users may change what webknock runs; chmod go-w it", path, perm)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("hook program: %w", err)
	}
	// The directories of the name as written (whose links could be
	// changed) and of the file it leads to.
	seen := map[string]bool{}
	for _, p := range []string{path, real} {
		for dir := filepath.Dir(p); !seen[dir]; dir = filepath.Dir(dir) {
			seen[dir] = true
			if err := checkDir(dir); err != nil {
				return fmt.Errorf("hook program %s: %w", path, err)
			}
		}
	}
	return nil
}

// checkDir refuses a directory in which someone else could replace a file.
func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if err := checkOwner(fi); err != nil {
		return fmt.Errorf("directory %s %w", dir, err)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 && fi.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("directory %s has mode %04o: other users may replace the program; chmod go-w it", dir, perm)
	}
	return nil
}

// checkOwner refuses a file owned by a user other than root and webknock's.
func checkOwner(fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 || int(st.Uid) == os.Geteuid() {
		return nil
	}
	return fmt.Errorf("is owned by uid %d, neither webknock's uid %d nor root: that user could run code as webknock", st.Uid, os.Geteuid())
}
