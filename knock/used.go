package knock

// This file holds the anti-replay state of one-time sequences: the last
// time step of each that granted. The caller persists it; knock only
// reads what it is given and reports what changes (Event.TimeStep).

// SetUsed records that the one-time sequence name granted at time step
// step: from now on its paths of that step and older give KindReused and
// never advance. A step older than the one recorded changes nothing; an
// unknown or static sequence is ignored (it reports false).
func (t *Tracker) SetUsed(name string, step int64) bool {
	for i, s := range t.seqs {
		if s.Name == name && s.OneTime != nil {
			t.used[i] = max(t.used[i], step)
			return true
		}
	}
	return false
}

// Used returns the last used time step of every one-time sequence that
// has granted, by name.
func (t *Tracker) Used() map[string]int64 {
	out := make(map[string]int64)
	for i, s := range t.seqs {
		if t.used[i] != noStep {
			out[s.Name] = t.used[i]
		}
	}
	return out
}
