package statedir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockFile is the lock's name in the state directory.
const lockFile = "lock"

// LockedError says that another process holds the state directory.
type LockedError struct {
	Dir string
	PID int // 0 when the holder did not write its PID
}

func (e *LockedError) Error() string {
	who := "another webknock"
	if e.PID > 0 {
		who = fmt.Sprintf("webknock (PID %d)", e.PID)
	}
	return fmt.Sprintf("%s already runs with state_dir %s", who, e.Dir)
}

// Lock is the exclusive hold of one state directory by one process.
type Lock struct{ f *os.File }

// Acquire prepares dir (see Prepare) and takes its lock without waiting:
// while another process holds it, the error is a *LockedError naming that
// process. The lock ends with Close or with the process.
func Acquire(dir string) (*Lock, error) {
	if err := Prepare(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	fi, err := f.Stat()
	if err == nil {
		err = trusted(fileWhat, path, fi)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &LockedError{Dir: dir, PID: readPID(f)}
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Close releases the lock.
func (l *Lock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

func readPID(f *os.File) int {
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}
