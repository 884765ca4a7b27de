package weblog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/webknock/webknock/internal/statedir"
)

// positionsFile is the name of the positions file in the state directory.
const positionsFile = "positions.json"

// maxPositionsBytes bounds what is read of the positions file: an entry is
// about 250 bytes, and there are at most a few per followed file plus
// maxClosed remembered ones.
const maxPositionsBytes = 4 << 20

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
	// Closed marks a file read and closed whose name (Path) was followed by
	// none of the paths: remembered so that if a followed name shows it
	// later (a glob, a changed configuration) it goes on from Offset.
	Closed bool `json:"closed,omitempty"`
}

type positionsDoc struct {
	Version int        `json:"version"`
	Files   []position `json:"files"`
}

// loadPositions reads dir/positions.json through statedir, which refuses a
// file another user could have written (errors.Is statedir.ErrUntrusted). A
// missing file is no positions and no error.
func loadPositions(dir string) ([]position, error) {
	name := filepath.Join(dir, positionsFile)
	b, err := statedir.ReadFile(name, maxPositionsBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load positions: %w", err)
	}
	return parsePositions(name, b)
}

// parsePositions reads the positions of a positions file's contents b.
func parsePositions(name string, b []byte) ([]position, error) {
	var doc positionsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	if doc.Version != 1 {
		return nil, fmt.Errorf("parse %s: unknown version %d", name, doc.Version)
	}
	for i, p := range doc.Files {
		if p.Offset < 0 || p.Path == "" {
			return nil, fmt.Errorf("parse %s: files[%d]: want a path and an offset of 0 or more", name, i)
		}
	}
	return doc.Files, nil
}

// savePositions replaces dir/positions.json atomically (statedir.WriteFile).
func savePositions(dir string, ps []position) error {
	if ps == nil {
		ps = []position{}
	}
	b, err := json.MarshalIndent(positionsDoc{Version: 1, Files: ps}, "", "  ")
	if err != nil {
		return fmt.Errorf("save positions: %w", err)
	}
	return statedir.WriteFile(filepath.Join(dir, positionsFile), append(b, '\n'))
}

// CheckState reports what would make Follow refuse stateDir's saved
// positions: a positions file another user could have written, or a link
// (errors.Is statedir.ErrUntrusted). It changes nothing. An unreadable or
// corrupt positions file is not an error: Follow warns and starts every file
// at its end.
func CheckState(stateDir string) error {
	if stateDir == "" {
		return nil
	}
	if _, err := loadPositions(stateDir); errors.Is(err, statedir.ErrUntrusted) {
		return err
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
