package knock

import "slices"

// Ahead reports whether h is a knock step that came before steps that
// should precede it: a later step, or the knock page, of a sequence in
// which h's client has not yet taken the steps before it. Applied now, h
// would be ignored or reset the client's progress; a caller that merges
// the lines of several web servers holds such a hit a moment, for the
// steps logged before it elsewhere to arrive (see feed's reorder). Ahead
// changes nothing.
func (t *Tracker) Ahead(h Hit) bool {
	for _, ref := range t.lookup(h.Path, h.Time) {
		if t.ahead(h, ref) {
			return true
		}
	}
	return false
}

// ahead is Ahead for one sequence path; it follows apply's decisions.
func (t *Tracker) ahead(h Hit, ref pathRef) bool {
	s := &t.seqs[ref.seq]
	if !slices.Contains(s.Methods, h.Method) || ref.step == closePage {
		return false
	}
	if ref.t != noStep && ref.t <= t.used[ref.seq] {
		return false // a used step: reported as such, never held
	}
	p := 0
	e := t.clients[h.Client]
	if e != nil {
		if e.locked(h.Time) {
			return false
		}
		if i := e.find(ref.seq); i >= 0 {
			p = int(e.prog[i].p)
			// In hmac mode the paths of one knock carry one time step: a
			// path of another is a new knock, not a late one.
			if s.derivesSteps() && t.stepOf(e.prog[i], s) != ref.t {
				return false
			}
		}
	}
	if ref.step == knockPage {
		ok := len(s.KnockPageStatus) == 0 || slices.Contains(s.KnockPageStatus, h.Status)
		return ok && p < s.steps()
	}
	return slices.Contains(s.StepStatus, h.Status) && int(ref.step) > p
}
