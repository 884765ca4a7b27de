package fleet

import (
	"fmt"
	"os"
)

// CheckPrivateFile checks a file that holds a secret (NATS credentials, a
// TLS key): a regular file that neither group nor others may read or write.
func CheckPrivateFile(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s: not a regular file", path)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s: readable by group or others (mode %04o); chmod 600 it", path, fi.Mode().Perm())
	}
	return nil
}
