package weblog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// positionsFile is the name of the positions file in the state directory.
const positionsFile = "positions.json"

// firstLineMax bounds how much of a first line is hashed: enough to tell two
// access logs apart (a timestamp and a client are in every line), and a
// reader never holds a whole overlong line for it.
const firstLineMax = 4096

// fileID identifies a file independently of its name.
type fileID struct {
	Dev uint64
	Ino uint64
}

func idOf(fi os.FileInfo) fileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}
	}
	return fileID{Dev: uint64(st.Dev), Ino: uint64(st.Ino)}
}

// position is where reading of one file is to resume.
type position struct {
	Path      string `json:"path"`       // the name the file was followed as
	Dev       uint64 `json:"dev"`        // with Ino: the file itself, whatever its name now
	Ino       uint64 `json:"ino"`        //
	Offset    int64  `json:"offset"`     // just after the last acknowledged line
	FirstLine string `json:"first_line"` // firstLineHash; an inode number can be reused by a new file
	// Rotated is where a file that no longer holds Path was at save time
	// (access.log.1): its rest is read after a restart during a grace period.
	Rotated string `json:"rotated,omitempty"`
}

type positionsDoc struct {
	Version int        `json:"version"`
	Files   []position `json:"files"`
}

// loadPositions reads dir/positions.json. A missing file is no positions and
// no error.
func loadPositions(dir string) ([]position, error) {
	name := filepath.Join(dir, positionsFile)
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var doc positionsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	if doc.Version != 1 {
		return nil, fmt.Errorf("parse %s: unknown version %d", name, doc.Version)
	}
	return doc.Files, nil
}

// savePositions replaces dir/positions.json so that a crash at any moment
// leaves either the old or the new file: write a temporary file, sync it,
// rename it over the old one, sync the directory that records the rename.
func savePositions(dir string, ps []position) (err error) {
	if ps == nil {
		ps = []position{}
	}
	b, err := json.MarshalIndent(positionsDoc{Version: 1, Files: ps}, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	tmp, err := os.CreateTemp(dir, ".positions-*.tmp")
	if err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	if err = os.Rename(tmp.Name(), filepath.Join(dir, positionsFile)); err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("save positions: sync %s: %w", dir, err)
	}
	return nil
}

// firstLineHash is the hex SHA-256 of the file's first line with its
// newline, of at most firstLineMax bytes; "" while the first line is
// unfinished.
func firstLineHash(r io.ReaderAt) (string, error) {
	buf := make([]byte, firstLineMax)
	n, err := r.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		buf = buf[:i+1]
	} else if n < firstLineMax {
		return "", nil
	}
	sum := sha256.Sum256(buf)
	return hex.EncodeToString(sum[:]), nil
}

// resumable reports whether p was saved for the open file r: the same
// inode, the same first line, still at least Offset bytes long, and Offset
// just after a newline. It explains a refusal for the log.
func resumable(p position, r io.ReaderAt, fi os.FileInfo) (ok bool, why string) {
	if idOf(fi) != (fileID{p.Dev, p.Ino}) {
		return false, "another file (device or inode differs)"
	}
	if fi.Size() < p.Offset {
		return false, fmt.Sprintf("file is shorter (%d bytes) than the saved offset %d", fi.Size(), p.Offset)
	}
	h, err := firstLineHash(r)
	if err != nil {
		return false, err.Error()
	}
	if h != p.FirstLine {
		return false, "first line differs (inode reused or file rewritten)"
	}
	if p.Offset > 0 {
		var b [1]byte
		if _, err := r.ReadAt(b[:], p.Offset-1); err != nil || b[0] != '\n' {
			return false, "saved offset is not at the end of a line"
		}
	}
	return true, ""
}
