package main

// This file holds `webknock keygen`: a fresh ed25519 signing key for a
// detector, and the public key line for the enforcers that trust it.

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/webknock/webknock/fleet"
)

func keygenFlags(fs *pflag.FlagSet) {
	fs.StringP("output", "o", "", "write the signing key to `FILE`, mode 0600 (required; never overwritten without --force)")
	fs.Bool("force", false, "replace an existing FILE (atomically: a new file renamed over it)")
}

// runKeygen is `webknock keygen`.
func runKeygen(_ context.Context, env *environment, fs *pflag.FlagSet, args []string) error {
	if len(args) > 0 {
		return usagef(env, fs, "unexpected argument %q", args[0])
	}
	out, _ := fs.GetString("output")
	force, _ := fs.GetBool("force")
	if out == "" {
		return usagef(env, fs, "-o FILE is required")
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("signing key file %s: %w", out, err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate signing key: %w", err)
	}
	data, err := fleet.MarshalSigningKey(priv)
	if err != nil {
		return err
	}
	if force {
		err = replaceFile(abs, data, 0o600)
	} else {
		err = writeNewFile(abs, data, 0o600)
	}
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("signing key file %s: already exists; not overwriting it (--force replaces it)", abs)
	}
	if err != nil {
		return fmt.Errorf("signing key file: %w", err)
	}
	// The key alone on the last line: scripts take it with tail -1.
	_, err = fmt.Fprintf(env.stdout, "wrote the signing key to %s (keep it private: fleet.signing_key_file on detectors)\n"+
		"public key (id %s) for fleet.trusted_keys on enforcers:\n%s\n",
		abs, fleet.KeyID(pub), fleet.FormatPublicKey(pub))
	return err
}

// replaceFile writes data to path through a new file in the same directory,
// renamed over path: a reader sees the old file or the new one, whole, and
// the new one never has a wider mode than perm.
func replaceFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
