package fleet

import (
	"fmt"
	"os"
	"syscall"
)

// CheckPrivateFile checks a file that holds a secret (NATS credentials, a
// TLS key), as ReadSigningKey checks a signing key; what names it.
func CheckPrivateFile(path, what string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, unwrapPath(err))
	}
	return checkPrivate(path, what, fi)
}

// checkPrivate is the rule for a file that holds a secret: a regular file
// (a link to one is followed), owned by webknock's user or by root, that
// neither group nor others may read or write. Whoever reads it can sign
// grants or join the bus as this daemon; whoever owns it can do both.
func checkPrivate(path, what string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %s is not a regular file but %s", path, what, fileKind(fi.Mode()))
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s: %s is owned by uid %d, neither webknock's uid %d nor root: that user could read or change it; chown it", path, what, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s: %s is readable or writable by group or others (mode %04o); chmod 600 it", path, what, perm)
	}
	return nil
}
