package knock

import (
	"crypto/subtle"
	"hash/maphash"
)

// knockPage marks the knock page in pathRef.step.
const knockPage = -1

// pathRef locates a path: which sequence, which step (or knockPage).
type pathRef struct {
	path string
	seq  int32
	step int32
}

// Paths returns every step and knock page of every sequence, in config order,
// so a reader can drop lines that cannot matter before parsing them.
func (t *Tracker) Paths() []string {
	var out []string
	for _, s := range t.seqs {
		out = append(out, s.Steps...)
		out = append(out, s.KnockPage)
	}
	return out
}

// lookup finds the sequence path equal to path. The secret paths are never
// compared byte by byte with a request's: the path is hashed with a key
// chosen at start, and only a path with the same keyed hash is compared, in
// constant time, so the time taken says nothing about how much of a secret
// a request got right.
func (t *Tracker) lookup(path string) (pathRef, bool) {
	for _, ref := range t.paths[maphash.String(t.seed, path)] {
		if subtle.ConstantTimeCompare([]byte(ref.path), []byte(path)) == 1 {
			return ref, true
		}
	}
	return pathRef{}, false
}
