package main

// This file holds the one rule for one-time key files, used by check, run,
// replay, url and helper.

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/webknock/webknock/knock"
)

// maxKeyFileBytes bounds a key file: one line of base64 and some slack.
const maxKeyFileBytes = 4 << 10

// readKeyFile reads a one-time key file's key.
func readKeyFile(path string) ([]byte, error) {
	b, err := readKeyFileData(path)
	if err != nil {
		return nil, err
	}
	key, err := knock.ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return key, nil
}

// readKeyFileData reads a one-time key file. It must be a regular file (a
// link to one is followed) owned by webknock's user or by root, that no
// other user may read or write: whoever reads the key can knock, and
// whoever writes it can choose it.
func readKeyFileData(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key file %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("key file %s is owned by uid %d, neither webknock's uid %d nor root: that user could change the key; chown it", path, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key file %s has mode %04o: other users may read or change the key; chmod 600 it", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if len(b) > maxKeyFileBytes {
		return nil, fmt.Errorf("key file %s: longer than %d bytes", path, maxKeyFileBytes)
	}
	return b, nil
}
