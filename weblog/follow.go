package weblog

// Following access logs (DESIGN.md, "Following logs").
//
// Every file is read through a descriptor of our own, at offsets we keep, so
// each line is known to come from one inode at one place. That is what lets
// the rest of a renamed log be read from exactly where reading stopped, lets
// positions be saved exactly, and keeps a line from being read twice.
// nxadm/tail reopens by name and cannot say which file a line came from:
// measured with Follow, ReOpen and CompleteLines on a rename+create rotation,
// it lost the lines written just before the rename and read the new file
// twice in half of the runs (its watcher stats the name and takes the new,
// empty file for a truncation of the old one).
//
// Names are watched through their directories (creation, rename, deletion);
// data through an inotify watch on each open inode (/proc/self/fd/N), which
// keeps reporting writes after the file was renamed or deleted. A directory
// that does not exist is waited for through its nearest existing ancestor,
// one level at a time as directories appear. Nothing polls: an idle follower
// sleeps in one select, and timers exist only while a grace period runs,
// positions wait to be saved, or a path is missing (to say so again).
//
// Files are known by identity (device, inode, first line), not by name: a
// file read before and shown again by a followed name (a glob matching
// access.log.1) goes on from where reading stopped, never from its start.
//
// Lines are handed over in batches: the whole lines of one read of one
// file, in one channel operation, so that following costs about what
// reading costs. A file is read again only once its batch is taken.
//
// An unfinished line is buffered up to MaxLineBytes; beyond that it is
// skipped to its newline and counted, so memory stays bounded whatever is
// written: a batch holds at most that and one read.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/webknock/webknock/internal/statedir"
)

// Start modes (FollowOptions.Start).
const (
	StartSaved     = "saved"     // resume each file where the last run stopped; elsewhere at the end
	StartEnd       = "end"       // only what is written from now on
	StartBeginning = "beginning" // existing content too
)

const (
	defaultGrace           = 30 * time.Second
	defaultMissingInterval = time.Minute
	saveDelay              = time.Second // an acknowledged position is saved at most this late
	readChunk              = 256 << 10
	maxFreeBufs            = 4    // read buffers kept for reuse
	maxClosed              = 1000 // closed files remembered by identity (a year of daily rotations)
	keyPath                = "path"
)

// Clock schedules the follower's grace periods and position saves.
type Clock interface {
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a function scheduled by a Clock.
type Timer interface {
	Stop() bool
}

type systemClock struct{}

func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// FollowOptions says what to follow and where to start.
type FollowOptions struct {
	Paths    []string      // files, or globs in the file name; every match is followed, each with its own position
	Start    string        // StartSaved, StartEnd or StartBeginning
	StateDir string        // positions are kept in StateDir/positions.json; "" keeps none
	Grace    time.Duration // how long a replaced file is still read after its successor appears; 0 means 30s
	Logger   *slog.Logger  // nil discards
	Clock    Clock         // nil is real time
	// MissingInterval is how often a path that does not exist is logged
	// again (at ERROR) while it is missing; 0 means a minute.
	MissingInterval time.Duration
	// OnRotate, if set, is called from the follower's goroutine when a file
	// is replaced (rotated, deleted and re-created) or truncated.
	OnRotate func(path string)
}

// batchBuf is the memory of batches, lent to one at a time and taken back
// when it is acknowledged: a busy log is followed without allocating.
type batchBuf struct {
	b     []byte        // room for the byte before a read, an unfinished line and a read
	owner atomic.Uint64 // the id of the batch it is lent to; 0 if none
}

// FollowStats counts what a Follower did, for all files and per followed name.
type FollowStats struct {
	FileStats
	Files map[string]FileStats
}

// FileStats counts the lines and events of one followed name.
type FileStats struct {
	Lines       int64 // lines delivered (in batches)
	Rotations   int64 // the name came to hold another file (rename or delete, then create)
	Truncations int64 // the file shrank or was rewritten under us (copytruncate)
	Overlong    int64 // lines longer than MaxLineBytes, skipped unread
}

// Follower follows access logs across rotation; see Follow.
type Follower struct {
	opts    FollowOptions
	log     *slog.Logger
	clock   Clock
	w       *fsnotify.Watcher
	batches chan Batch
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	err     error // of the final save; read after done is closed

	acked chan struct{} // capacity 1: Ack was called since the loop last looked
	// ackSignalled is set by the Ack that signals acked, cleared by the
	// save that follows.
	ackSignalled atomic.Bool
	timers       chan func()           // Clock callbacks, run by the loop
	probe        chan chan probeResult // tests: read all that can be read, report what is held
	pats         []string              // the configured paths, absolute; not changed after Follow

	ackMu sync.Mutex // guards gen.ackEpoch and gen.ackOff

	caughtUp atomic.Bool    // see CaughtUp
	free     chan *batchBuf // given back by Ack

	statsMu sync.Mutex
	stats   FollowStats

	// Owned by the loop goroutine (and by Follow before it starts).
	dirs         map[string][]string // directory of configured paths → file name patterns in it
	dirOrder     []string            // the keys of dirs, in configuration order
	present      map[string]bool     // directories of dirs that exist and are watched
	watched      map[string]fileID   // directories watched (those present, ancestors of missing ones): which one
	entries      map[string]*entry   // by followed name
	order        []*entry            // delivery round robin
	next         int                 // where the round robin resumes
	byWatch      map[string]*gen     // by inode watch name
	closed       map[fileID]*gen     // files read and closed that still exist
	closedSeq    int64               // orders closed, to forget the oldest
	batchSeq     uint64              // the last Batch.id
	saveTimer    Timer               // non-nil while a save is scheduled
	missingTimer Timer               // non-nil while a path is missing
	reported     []string            // missing paths logged at ERROR, to log when they appear
	partialPeak  int                 // the largest unfinished-line buffer so far (tests)
}

// probeResult is what the test probe reports.
type probeResult struct {
	pending     int // batches read, not yet delivered
	partialPeak int // the largest capacity an unfinished-line buffer reached
	graces      int // grace periods running
}

// entry is one followed name and the files that held it.
type entry struct {
	name string
	cur  *gen   // the file at name; nil while there is none
	old  []*gen // files that held name before, still read, oldest first
}

// gen is one open file (one inode) of an entry.
type gen struct {
	e     *entry
	f     *os.File
	id    fileID
	watch string // /proc/self/fd/N: an inotify watch on the inode, whatever its name

	off       int64  // next byte to read
	lineStart int64  // just after the last newline read: where the unfinished line starts
	last      byte   // the byte at off-1, to notice the file was rewritten under us
	partial   []byte // the unfinished line, from lineStart to off; at most MaxLineBytes
	discard   bool   // the unfinished line is overlong: skipped to its newline
	pending   Batch  // read, not yet delivered; Text nil if none
	readable  bool   // there may be bytes after off
	epoch     int64  // truncations so far

	// Set when the file is closed but still exists (Follower.closed).
	name string // where it was
	hash string // firstLineHash
	seq  int64  // when

	graceStarted bool
	grace        Timer
	expiring     bool // the grace period is over: read to the end, then close

	ackEpoch, ackOff int64 // guarded by Follower.ackMu
}

// Follow starts following o.Paths. Each file is positioned before Follow
// returns (so what is written afterwards is delivered); files that appear
// later, under a configured name or matching a glob, also in a directory
// that did not exist, are read from their beginning (a file read before
// from where reading stopped). A missing file or directory is not an error:
// it is logged, reported by Missing, and waited for. A file renamed or
// deleted away is still read until Grace after a new file takes its name.
// Follow fails on a positions file another user could have written
// (errors.Is statedir.ErrUntrusted). Stop with Close or by cancelling ctx.
func Follow(ctx context.Context, o FollowOptions) (*Follower, error) {
	switch o.Start {
	case StartSaved, StartEnd, StartBeginning:
	default:
		return nil, fmt.Errorf("follow: start %q: want %s, %s or %s", o.Start, StartSaved, StartEnd, StartBeginning)
	}
	if o.Start == StartSaved && o.StateDir == "" {
		return nil, errors.New("follow: start saved needs a state directory")
	}
	if len(o.Paths) == 0 {
		return nil, errors.New("follow: no paths")
	}
	if o.Grace < 0 {
		return nil, fmt.Errorf("follow: negative grace %v", o.Grace)
	}
	if o.Grace == 0 {
		o.Grace = defaultGrace
	}
	if o.MissingInterval < 0 {
		return nil, fmt.Errorf("follow: negative missing interval %v", o.MissingInterval)
	}
	if o.MissingInterval == 0 {
		o.MissingInterval = defaultMissingInterval
	}
	f := &Follower{
		opts:    o,
		log:     o.Logger,
		clock:   o.Clock,
		batches: make(chan Batch),
		done:    make(chan struct{}),
		acked:   make(chan struct{}, 1),
		timers:  make(chan func()),
		probe:   make(chan chan probeResult),
		stats:   FollowStats{Files: map[string]FileStats{}},
		dirs:    map[string][]string{},
		present: map[string]bool{},
		watched: map[string]fileID{},
		entries: map[string]*entry{},
		byWatch: map[string]*gen{},
		closed:  map[fileID]*gen{},
		free:    make(chan *batchBuf, maxFreeBufs),
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.clock == nil {
		f.clock = systemClock{}
	}
	var saved []position
	if o.StateDir != "" {
		// Refused whatever the start mode: the file is ours to write too,
		// and one that another user could have written means tampering.
		ps, err := loadPositions(o.StateDir)
		if errors.Is(err, statedir.ErrUntrusted) {
			return nil, fmt.Errorf("follow: %w", err)
		}
		if o.Start == StartSaved {
			if err != nil {
				f.log.Warn("saved positions unusable; every file starts at its end", "err", err)
			}
			saved = ps
		}
		for _, t := range statedir.RemoveTemps(filepath.Join(o.StateDir, positionsFile)) {
			f.log.Info("removed the temporary file of an interrupted save", keyPath, t)
		}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("follow: %w", err)
	}
	f.w = w
	f.ctx, f.cancel = context.WithCancel(ctx)
	if err := f.setup(saved); err != nil {
		f.cancel()
		f.closeFiles()
		w.Close()
		return nil, err
	}
	go f.loop()
	return f, nil
}

// Batches delivers the lines, a batch per read, in file order for each file.
func (f *Follower) Batches() <-chan Batch { return f.batches }

// Ack records that the consumer has fully handled b, and every line of its
// file before it, and takes b.Text back. Saved positions are those of
// acknowledged batches, so a line delivered but not acknowledged is
// delivered again after a restart.
func (f *Follower) Ack(b Batch) {
	g := b.g
	if g == nil {
		return
	}
	// Once only, and not after the memory went to a later batch.
	if b.buf.owner.CompareAndSwap(b.id, 0) {
		f.giveBack(b.buf)
	}
	f.ackMu.Lock()
	if b.epoch > g.ackEpoch || b.epoch == g.ackEpoch && b.end > g.ackOff {
		g.ackEpoch, g.ackOff = b.epoch, b.end
	}
	f.ackMu.Unlock()
	// The loop only has to schedule a save: once until it is done, not
	// on every batch.
	if f.ackSignalled.CompareAndSwap(false, true) {
		select {
		case f.acked <- struct{}{}:
		default:
		}
	}
}

// Close stops following, saves the positions and closes Lines. It returns
// the error of that save.
func (f *Follower) Close() error {
	f.cancel()
	<-f.done
	return f.err
}

// CaughtUp reports whether the follower, when it last looked, had read every
// file to its end and had nothing to deliver but the batch it was handing
// over: once the batches received so far are handled, only what is written
// from then on is left. It is false until the first look.
func (f *Follower) CaughtUp() bool { return f.caughtUp.Load() }

// Missing returns the configured paths that do not exist now: a file path
// whose file (or directory) is missing, the directory of a glob whose
// directory is missing (a glob that matches nothing is not missing). They
// are followed once they appear.
func (f *Follower) Missing() []string { return missingPaths(f.pats) }

// Stats returns the counters so far.
func (f *Follower) Stats() FollowStats {
	f.statsMu.Lock()
	defer f.statsMu.Unlock()
	s := f.stats
	s.Files = maps.Clone(f.stats.Files)
	return s
}

func (f *Follower) setup(saved []position) error {
	for _, p := range f.opts.Paths {
		abs, err := splitPath(p)
		if err != nil {
			return fmt.Errorf("follow %w", err)
		}
		dir, base := filepath.Dir(abs), filepath.Base(abs)
		if _, ok := f.dirs[dir]; !ok {
			f.dirOrder = append(f.dirOrder, dir)
		}
		f.dirs[dir] = append(f.dirs[dir], base)
		f.pats = append(f.pats, abs)
	}
	// Watched before they are listed, so that a file created in between is seen.
	if _, err := f.watchDirs(); err != nil {
		return fmt.Errorf("follow: %w", err)
	}
	for _, abs := range f.pats {
		names := []string{abs}
		if hasMeta(filepath.Base(abs)) {
			names, _ = filepath.Glob(abs) // the pattern was checked by splitPath
		}
		for _, n := range names {
			f.addEntry(n)
		}
	}
	for _, e := range f.order {
		f.openInitial(e, saved)
	}
	f.resumeRotated(saved)
	f.rememberSaved(saved)
	f.reviewMissing(true)
	return nil
}

// splitPath makes p absolute and checks that a pattern is only in its file
// name and is well formed.
func splitPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	if hasMeta(filepath.Dir(abs)) {
		return "", fmt.Errorf("%s: a pattern may only be in the file name", p)
	}
	if _, err := filepath.Match(filepath.Base(abs), ""); err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return abs, nil
}

// CheckPaths checks log paths as `webknock check` reports them: a path
// whose directory does not exist (most likely a typo), a pattern outside
// the file name or a bad one, or a path that is not a regular file is an
// error; a file not there yet in an existing directory (the web server may
// not have written it), or a glob that matches nothing yet, is a warning.
// Follow accepts all of them and waits.
func CheckPaths(paths []string) (errs []error, warnings []string) {
	for _, p := range paths {
		abs, err := splitPath(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("log path %w", err))
			continue
		}
		dir := filepath.Dir(abs)
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("log path %s: directory %s does not exist", p, dir))
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("log path %s: %w", p, err))
			continue
		case !fi.IsDir():
			errs = append(errs, fmt.Errorf("log path %s: %s is not a directory", p, dir))
			continue
		}
		if hasMeta(filepath.Base(abs)) {
			if m, _ := filepath.Glob(abs); len(m) == 0 {
				warnings = append(warnings, fmt.Sprintf("log path %s matches no file yet; files that appear are read from their beginning", p))
			}
			continue
		}
		fi, err = os.Stat(abs)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			warnings = append(warnings, fmt.Sprintf("log file %s does not exist yet (the web server may not have written it); it is read from its beginning once it appears", p))
		case err != nil:
			errs = append(errs, fmt.Errorf("log path %s: %w", p, err))
		case !fi.Mode().IsRegular():
			errs = append(errs, fmt.Errorf("log path %s: not a regular file (%s)", p, fi.Mode().Type()))
		}
	}
	return errs, warnings
}

// missingPaths is Follower.Missing for the absolute configured paths pats.
func missingPaths(pats []string) []string {
	var out []string
	add := func(p string) {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, p := range pats {
		dir, glob := filepath.Dir(p), hasMeta(filepath.Base(p))
		switch {
		case !isDir(dir) && glob:
			add(dir)
		case !isDir(dir):
			add(p)
		case !glob:
			if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
				add(p)
			}
		}
	}
	return out
}

func isDir(name string) bool {
	fi, err := os.Stat(name)
	return err == nil && fi.IsDir()
}

// existingDir is dir if it is a directory, else its nearest ancestor that is.
func existingDir(dir string) string {
	for {
		if isDir(dir) {
			return dir
		}
		up := filepath.Dir(dir)
		if up == dir {
			return dir
		}
		dir = up
	}
}

// watchDirs watches each configured directory if it exists, else its
// nearest existing ancestor, and drops watches no longer needed. It returns
// the directories that came to exist. A directory created while it works is
// found by looking again once the watch that would report it is in place.
func (f *Follower) watchDirs() (appeared []string, err error) {
	for range 100 { // each round goes deeper; a bound against a pathological race
		changed := false
		want := map[string]bool{}
		for _, d := range f.dirOrder {
			w := existingDir(d)
			want[w] = true
			if _, ok := f.watched[w]; !ok {
				id, err := f.watchDir(w)
				if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
					changed = true // gone again: look again
					continue
				}
				if err != nil {
					return appeared, err
				}
				f.watched[w] = id
				changed = true
			}
			switch {
			case w == d && !f.present[d]:
				f.present[d] = true
				appeared = append(appeared, d)
			case w != d && f.present[d]:
				f.present[d] = false
				f.log.Warn("log directory gone; waiting for it to come back", keyPath, d)
			}
		}
		for w := range f.watched {
			if !want[w] {
				f.unwatch(w)
			}
		}
		if !changed {
			return appeared, nil
		}
	}
	return appeared, nil
}

// watchDir watches dir and returns its identity, which the watch is sure
// to follow (the directory did not change while the watch was added).
func (f *Follower) watchDir(dir string) (fileID, error) {
	before, err := os.Stat(dir)
	if err != nil {
		return fileID{}, err
	}
	if err := f.w.Add(dir); err != nil {
		return fileID{}, fmt.Errorf("watch %s: %w", dir, err)
	}
	after, err := os.Stat(dir)
	if err == nil && idOf(after) != idOf(before) {
		err = fmt.Errorf("watch %s: replaced while watched: %w", dir, fs.ErrNotExist)
	}
	if err != nil {
		f.unwatch(dir)
		return fileID{}, err
	}
	return idOf(after), nil
}

// verifyDirs notices watched directories that were removed or replaced.
// The kernel does not always say: a removed directory holding a deleted
// file still open (a log in its grace period) reports no deletion of
// itself, and its parent may not be watched. Called on every change of
// names and on the missing-path reminder, whose timer runs in that case
// (the file is missing too).
func (f *Follower) verifyDirs() {
	stale := false
	for dir, id := range f.watched {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || idOf(fi) != id {
			stale = true
			f.forgetDir(dir)
		}
	}
	if stale {
		f.dirsChanged()
	}
}

// forgetDir drops the watch of a directory that went away; one that takes
// its place is new (it appears).
func (f *Follower) forgetDir(dir string) {
	if f.present[dir] {
		f.present[dir] = false
		f.log.Warn("log directory gone or replaced", keyPath, dir)
	}
	f.unwatch(dir)
}

func (f *Follower) unwatch(dir string) {
	delete(f.watched, dir)
	if err := f.w.Remove(dir); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
		f.log.Debug("remove watch", keyPath, dir, "err", err)
	}
}

// dirsChanged watches directories again after one appeared or went away,
// and reads the files in those that appeared from their beginning.
func (f *Follower) dirsChanged() {
	appeared, err := f.watchDirs()
	if err != nil {
		f.log.Warn("cannot watch log directory; tried again when its parent changes", "err", err)
	}
	for _, d := range appeared {
		f.log.Info("log directory appeared", keyPath, d)
		for _, p := range f.dirs[d] {
			full := filepath.Join(d, p)
			if !hasMeta(p) {
				f.check(f.addEntry(full))
				continue
			}
			names, _ := filepath.Glob(full)
			for _, n := range names {
				f.check(f.addEntry(n))
			}
		}
	}
}

// leadsToMissing reports whether name is a directory we wait for, or one on
// the way to it.
func (f *Follower) leadsToMissing(name string) bool {
	for _, d := range f.dirOrder {
		if !f.present[d] && (d == name || strings.HasPrefix(d, name+string(filepath.Separator))) {
			return true
		}
	}
	return false
}

// reviewMissing logs paths that appeared (INFO, if they were reported),
// with report those missing (ERROR), and keeps a timer to report them again
// while any is missing.
func (f *Follower) reviewMissing(report bool) {
	now := missingPaths(f.pats)
	f.reported = slices.DeleteFunc(f.reported, func(p string) bool {
		if slices.Contains(now, p) {
			return false
		}
		f.log.Info("log path appeared", keyPath, p)
		return true
	})
	if report {
		for _, p := range now {
			f.log.Error("log path does not exist; followed once it appears", keyPath, p)
		}
		f.reported = now
	}
	switch {
	case len(now) > 0 && f.missingTimer == nil:
		f.missingTimer = f.clock.AfterFunc(f.opts.MissingInterval, f.post(func() {
			f.missingTimer = nil
			f.verifyDirs()
			f.reviewMissing(true)
		}))
	case len(now) == 0 && f.missingTimer != nil:
		f.missingTimer.Stop()
		f.missingTimer = nil
	}
}

func hasMeta(s string) bool { return strings.ContainsAny(s, `*?[\`) }

func (f *Follower) addEntry(name string) *entry {
	if e := f.entries[name]; e != nil {
		return e
	}
	e := &entry{name: name}
	f.entries[name] = e
	f.order = append(f.order, e)
	return e
}

// openInitial opens a file present at start and positions it by Start.
func (f *Follower) openInitial(e *entry, saved []position) {
	fh, fi, err := openLog(e.name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return // reported by reviewMissing
	}
	if err != nil {
		f.log.Warn("cannot open log; tried again when it changes", keyPath, e.name, "err", err)
		return
	}
	id := idOf(fi)
	if f.openGen(id) != nil {
		fh.Close()
		return
	}
	var off int64
	if f.opts.Start != StartBeginning {
		if off, err = lastLineEnd(fh, fi.Size()); err != nil {
			fh.Close()
			f.log.Warn("cannot read log; tried again when it changes", keyPath, e.name, "err", err)
			return
		}
	}
	if f.opts.Start == StartSaved {
		ok, why := false, "no saved position"
		// By identity, not by name: a glob may show under its own name a
		// file that was read as another (access.log, now access.log.1).
		i := slices.IndexFunc(saved, func(p position) bool { return fileID{p.Dev, p.Ino} == id })
		if i >= 0 {
			ok, why = resumable(saved[i], fh, fi)
		}
		if ok {
			off = saved[i].Offset
			f.log.Info("resuming log at its saved position", keyPath, e.name, "offset", off)
		} else {
			f.log.Info("starting log at its end", keyPath, e.name, "reason", why)
		}
	}
	e.cur = f.newGen(e, fh, fi, off)
}

// resumeRotated reopens files that were being read after a rotation when
// positions were saved, and reads their rest.
func (f *Follower) resumeRotated(saved []position) {
	for _, p := range saved {
		e := f.entries[p.Path]
		if p.Rotated == "" || p.Closed || e == nil {
			continue
		}
		fh, fi, err := openLog(p.Rotated)
		if err != nil {
			f.log.Info("rotated log gone; its unread rest is lost", keyPath, p.Path, "rotated", p.Rotated, "err", err)
			continue
		}
		if f.openGen(idOf(fi)) != nil {
			fh.Close()
			continue
		}
		if ok, why := resumable(p, fh, fi); !ok {
			fh.Close()
			f.log.Info("rotated log changed; its unread rest is lost", keyPath, p.Path, "rotated", p.Rotated, "reason", why)
			continue
		}
		g := f.newGen(e, fh, fi, p.Offset)
		e.old = append(e.old, g)
		if e.cur != nil {
			f.startGrace(g)
		}
		f.log.Info("reading the rest of a rotated log", keyPath, p.Path, "rotated", p.Rotated, "offset", p.Offset)
	}
}

// rememberSaved keeps the saved positions of files not opened that still
// exist where they were saved, so that a followed name showing one later
// goes on from its position.
func (f *Follower) rememberSaved(saved []position) {
	for _, p := range saved {
		id, name := fileID{p.Dev, p.Ino}, p.Path
		if p.Rotated != "" {
			name = p.Rotated
		}
		if f.openGen(id) != nil || f.closed[id] != nil {
			continue
		}
		if fi, err := os.Stat(name); err != nil || idOf(fi) != id {
			continue
		}
		g := &gen{id: id, off: p.Offset, lineStart: p.Offset, ackOff: p.Offset, name: name, hash: p.FirstLine}
		f.remember(g)
	}
}

// remember adds the closed file g to f.closed, forgetting the oldest beyond maxClosed.
func (f *Follower) remember(g *gen) {
	f.closedSeq++
	g.seq = f.closedSeq
	f.closed[g.id] = g
	if len(f.closed) > maxClosed {
		var oldest *gen
		for _, c := range f.closed {
			if oldest == nil || c.seq < oldest.seq {
				oldest = c
			}
		}
		delete(f.closed, oldest.id)
	}
}

// openLog opens a regular file for reading.
func openLog(name string) (*os.File, os.FileInfo, error) {
	// O_NONBLOCK: a FIFO matching a glob must not hang the open.
	fh, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := fh.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s: not a regular file", name)
	}
	if err != nil {
		fh.Close()
		return nil, nil, err
	}
	return fh, fi, nil
}

// lastLineEnd is the offset just after the last newline before size: "the
// end" of a log, without the unfinished line a writer may be in the middle
// of (its rest would otherwise arrive as a line of its own).
func lastLineEnd(r io.ReaderAt, size int64) (int64, error) {
	buf := make([]byte, 4096)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		n, err := r.ReadAt(buf[:end-start], start)
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return start + int64(i) + 1, nil
		}
		end = start
	}
	return 0, nil
}

func (f *Follower) newGen(e *entry, fh *os.File, fi os.FileInfo, off int64) *gen {
	g := &gen{id: idOf(fi), off: off, lineStart: off, ackOff: off}
	f.attach(g, e, fh)
	return g
}

// attach makes fh, positioned at g.off, the open file of g as a file of e.
func (f *Follower) attach(g *gen, e *entry, fh *os.File) {
	g.e, g.f, g.readable = e, fh, true
	g.last = 0
	if g.off > 0 {
		g.last = '\n' // every start offset is just after a line
	}
	g.watch = "/proc/self/fd/" + strconv.FormatUint(uint64(fh.Fd()), 10)
	if err := f.w.Add(g.watch); err != nil {
		f.log.Warn("cannot watch log; its lines may come late", keyPath, e.name, "err", err)
	}
	f.byWatch[g.watch] = g
	f.scheduleSave()
}

// reopen takes fh, a file that appeared under e.name, up again where reading
// it stopped if it is one read and closed before. It returns nil for a file
// not known.
func (f *Follower) reopen(e *entry, fh *os.File, fi os.FileInfo) *gen {
	g := f.closed[idOf(fi)]
	if g == nil {
		return nil
	}
	delete(f.closed, g.id)
	p := position{Dev: g.id.Dev, Ino: g.id.Ino, Offset: g.lineStart, FirstLine: g.hash}
	if ok, why := resumable(p, fh, fi); !ok {
		f.log.Info("file read before has changed; reading it from its beginning", keyPath, e.name, "reason", why)
		return nil
	}
	g.off, g.partial, g.discard, g.pending = g.lineStart, nil, false, Batch{}
	g.graceStarted, g.grace, g.expiring = false, nil, false
	g.name, g.hash = "", ""
	f.attach(g, e, fh)
	f.log.Info("file read before appeared under a followed name; reading on from where reading stopped",
		keyPath, e.name, "offset", g.off)
	return g
}

// openGen returns the open file with identity id, or nil.
func (f *Follower) openGen(id fileID) *gen {
	for _, e := range f.order {
		for g := range e.all {
			if g.id == id {
				return g
			}
		}
	}
	return nil
}

// all yields the files of e, the oldest first.
func (e *entry) all(yield func(*gen) bool) {
	for _, g := range e.old {
		if !yield(g) {
			return
		}
	}
	if e.cur != nil {
		yield(e.cur)
	}
}

func (f *Follower) loop() {
	defer close(f.done)
	events, errs := f.w.Events, f.w.Errors
	for {
		f.fill()
		g, k := f.ready()
		var out chan<- Batch
		var b Batch
		if g != nil {
			out, b = f.batches, g.pending
		}
		// fill read every readable file that had no batch waiting: with
		// none waiting now, every file is read to its end.
		f.caughtUp.Store(g == nil)
		select {
		case <-f.ctx.Done():
			f.err = f.shutdown()
			return
		case out <- b:
			g.pending = Batch{}
			f.next = k + 1
			if next, _ := f.ready(); !g.readable && next == nil {
				// Its read reached the end: nothing is left to read or deliver.
				f.caughtUp.Store(true)
			}
			f.count(g.e.name, func(s *FileStats) { s.Lines += int64(b.n) })
		case ev, ok := <-events:
			if !ok {
				events = nil
				f.log.Error("file watcher stopped; logs are no longer followed")
				continue
			}
			f.handle(ev)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			f.watchError(err)
		case <-f.acked:
			f.scheduleSave()
		case fn := <-f.timers:
			fn()
		case reply := <-f.probe:
			select {
			case <-f.acked:
				f.scheduleSave()
			default:
			}
			for _, e := range f.order {
				for g := range e.all {
					g.readable = true
				}
			}
			f.fill()
			r := probeResult{partialPeak: f.partialPeak}
			for _, e := range f.order {
				for g := range e.all {
					if g.pending.Text != nil {
						r.pending++
					}
					if g.grace != nil {
						r.graces++
					}
				}
			}
			reply <- r
		}
	}
}

// fill reads the files that may have more, each only once its earlier lines
// are delivered, and closes rotated files whose grace period is over.
func (f *Follower) fill() {
	var finished []*gen // closed after the loop: closing changes entry.old
	for _, e := range f.order {
		for g := range e.all {
			if g.readable && g.pending.Text == nil {
				f.read(g)
			}
			if g.expiring && !g.readable && g.pending.Text == nil {
				finished = append(finished, g)
			}
		}
	}
	for _, g := range finished {
		f.closeGen(g)
		// Its new name may be followed (access.log* matches access.log.1):
		// it goes on under that name from where reading stopped.
		if f.closed[g.id] == g && f.followed(g.name) {
			f.check(f.addEntry(g.name))
		}
	}
}

// ready picks the next file with a batch to deliver: files in turn, and for
// one name the older files first.
func (f *Follower) ready() (*gen, int) {
	for i := range f.order {
		k := (f.next + i) % len(f.order)
		for g := range f.order[k].all {
			if g.pending.Text != nil {
				return g, k
			}
		}
	}
	return nil, 0
}

// read reads g until it has a batch of whole lines or is at its end.
func (f *Follower) read(g *gen) {
	bb := f.takeBuf()
	defer func() {
		if g.pending.buf != bb {
			f.giveBack(bb)
		}
	}()
	for g.pending.Text == nil {
		// The unfinished line goes first, then what is read: the batch's
		// lines are contiguous without another copy. bb.b[0] is room for
		// the byte before off when there is no unfinished line.
		p := copy(bb.b[1:], g.partial)
		// Reading from the byte before off too tells whether the file is
		// still the one we read: copytruncate may shrink it and the writer
		// fill it again past off before we look.
		from, at := g.off, p+1
		if from > 0 {
			from, at = from-1, p
		}
		buf := bb.b[at : p+1+readChunk]
		n, err := g.f.ReadAt(buf, from)
		if err != nil && !errors.Is(err, io.EOF) {
			f.log.Warn("cannot read log; tried again when it changes", keyPath, g.e.name, "err", err)
			g.readable = false
			return
		}
		if at == p && (n == 0 || buf[0] != g.last || n > 1 && f.rewritten(g, from)) {
			f.truncated(g)
			continue
		}
		f.split(g, bb, p+1, at+n)
		if n < len(buf) {
			g.readable = false
			return
		}
	}
}

// takeBuf returns memory for a read: a buffer given back by Ack, or a new one.
func (f *Follower) takeBuf() *batchBuf {
	select {
	case bb := <-f.free:
		return bb
	default:
		return &batchBuf{b: make([]byte, 1+MaxLineBytes+readChunk)}
	}
}

// giveBack keeps bb for another read, unless enough are kept.
func (f *Follower) giveBack(bb *batchBuf) {
	select {
	case f.free <- bb:
	default:
	}
}

// rewritten reports whether the byte at from, read again after the data
// behind it, is no longer g.last. A read racing a truncation can return old
// bytes up to some point and new ones after it (measured); bytes are written
// in increasing order, so if new bytes were read, the byte before them is
// new by now too.
func (f *Follower) rewritten(g *gen, from int64) bool {
	var b [1]byte
	_, err := g.f.ReadAt(b[:], from)
	return err != nil || b[0] != g.last
}

// split makes the whole lines of bb.b[start:end], read at g.off and just
// after a copy of the unfinished line, g's pending batch. Lines longer than
// MaxLineBytes are skipped and counted, and an unfinished one is buffered
// only up to that length.
func (f *Follower) split(g *gen, bb *batchBuf, start, end int) {
	data := bb.b[start:end]
	if len(data) == 0 {
		return
	}
	at := g.off // of data[0]
	g.off += int64(len(data))
	g.last = data[len(data)-1]
	if g.discard {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return
		}
		g.discard = false
		data, at, start = data[i+1:], at+int64(i)+1, start+i+1
		g.lineStart = at
	}
	i := bytes.LastIndexByte(data, '\n')
	if i < 0 {
		f.keepPartial(g, data)
		return
	}
	chunk := bb.b[start-len(g.partial) : start+i+1]
	g.lineStart = at + int64(i) + 1
	g.partial = g.partial[:0]
	if len(chunk) > MaxLineBytes+1 { // it may hold an overlong line
		chunk = f.dropOverlong(g, chunk)
	}
	if len(chunk) > 0 {
		f.batchSeq++
		bb.owner.Store(f.batchSeq)
		g.pending = Batch{Source: g.e.name, Text: chunk[:len(chunk):len(chunk)], n: bytes.Count(chunk, []byte{'\n'}),
			g: g, epoch: g.epoch, end: g.lineStart, buf: bb, id: f.batchSeq}
	}
	f.keepPartial(g, data[i+1:])
}

// dropOverlong removes, in place, the lines of chunk (whole lines) longer
// than MaxLineBytes, counting each.
func (f *Follower) dropOverlong(g *gen, chunk []byte) []byte {
	w, pos := 0, 0 // bytes kept; where the rest starts
	for {
		o := overlongAt(chunk, pos)
		end := o
		if o < 0 {
			end = len(chunk)
		}
		if w != pos {
			copy(chunk[w:], chunk[pos:end])
		}
		w += end - pos
		if o < 0 {
			return chunk[:w]
		}
		f.overlong(g)
		pos = o + bytes.IndexByte(chunk[o:], '\n') + 1
	}
}

// overlongAt returns where the first line of chunk (whole lines) at or
// after pos that is longer than MaxLineBytes starts, or -1. It looks at
// MaxLineBytes+1 bytes at a time: a line starting there is overlong if they
// hold no newline, else none ends before their last one.
func overlongAt(chunk []byte, pos int) int {
	for len(chunk)-pos > MaxLineBytes+1 {
		i := bytes.LastIndexByte(chunk[pos:pos+MaxLineBytes+1], '\n')
		if i < 0 {
			return pos
		}
		pos += i + 1
	}
	return -1
}

// keepPartial appends data, without a newline, to the unfinished line; past
// MaxLineBytes the line is dropped and the rest of it skipped.
func (f *Follower) keepPartial(g *gen, data []byte) {
	n := len(g.partial) + len(data)
	if n > MaxLineBytes {
		g.partial, g.discard = nil, true
		f.overlong(g)
		return
	}
	if n > cap(g.partial) {
		// Grown by hand: append's doubling could pass the limit.
		p := make([]byte, len(g.partial), min(MaxLineBytes, max(n, 2*cap(g.partial), 512)))
		copy(p, g.partial)
		g.partial = p
	}
	g.partial = append(g.partial, data...)
	f.partialPeak = max(f.partialPeak, cap(g.partial))
}

func (f *Follower) overlong(g *gen) {
	f.count(g.e.name, func(s *FileStats) { s.Overlong++ })
	f.log.Debug("line longer than MaxLineBytes skipped", keyPath, g.e.name, "max", MaxLineBytes)
}

func (f *Follower) truncated(g *gen) {
	f.log.Info("log truncated; reading it from its start", keyPath, g.e.name, "offset", g.off)
	if len(g.partial) > 0 {
		f.log.Warn("unfinished line lost to truncation", keyPath, g.e.name, "bytes", len(g.partial))
	}
	g.off, g.lineStart, g.last, g.partial, g.discard = 0, 0, 0, nil, false
	g.epoch++
	f.ackMu.Lock()
	g.ackEpoch, g.ackOff = g.epoch, 0
	f.ackMu.Unlock()
	f.count(g.e.name, func(s *FileStats) { s.Truncations++ })
	f.rotated(g.e.name)
	f.scheduleSave()
}

func (f *Follower) handle(ev fsnotify.Event) {
	name := filepath.Clean(ev.Name)
	if g := f.byWatch[name]; g != nil {
		g.readable = true
		if ev.Has(fsnotify.Rename) {
			// fsnotify drops the watch of a moved file; the inode is still ours.
			if err := f.w.Add(g.watch); err != nil {
				f.log.Warn("cannot watch rotated log; its lines may come late", keyPath, g.e.name, "err", err)
			}
		}
		// Deletion shows on the inode as a change of attributes (link count).
		if ev.Has(fsnotify.Rename) || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Chmod) {
			f.check(g.e)
			f.verifyDirs()
			f.reviewMissing(false)
		}
		return
	}
	structural := ev.Has(fsnotify.Create) || ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)
	if structural {
		defer func() {
			f.verifyDirs()
			f.reviewMissing(false)
		}()
	}
	if e := f.entries[name]; e != nil {
		// Writes are seen on the inode; the directory tells what the name holds.
		if ev.Op&^fsnotify.Write != 0 || e.cur == nil {
			f.check(e)
		}
		return
	}
	if !structural {
		return
	}
	if _, ok := f.watched[name]; ok && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
		f.forgetDir(name)
		f.dirsChanged()
		return
	}
	if f.leadsToMissing(name) {
		f.dirsChanged()
		return
	}
	if ev.Has(fsnotify.Create) && f.matches(name) {
		f.check(f.addEntry(name))
	}
}

// followed reports whether name is a configured path or matches a glob.
func (f *Follower) followed(name string) bool {
	return name != "" && (f.entries[name] != nil || f.matches(name))
}

func (f *Follower) matches(name string) bool {
	base := filepath.Base(name)
	for _, p := range f.dirs[filepath.Dir(name)] {
		if ok, _ := filepath.Match(p, base); ok && hasMeta(p) {
			return true
		}
	}
	return false
}

// check looks at what e.name holds now: the same file, none (renamed or
// deleted away), or a new one, which is read from its beginning while the
// previous one is read for the grace period.
func (f *Follower) check(e *entry) {
	fh, fi, err := openLog(e.name)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		if e.cur != nil {
			f.log.Info("log moved or deleted; still read until a new one appears and the grace period ends", keyPath, e.name)
			f.retire(e)
		}
		return
	}
	if err != nil {
		f.log.Warn("cannot open log; tried again when it changes", keyPath, e.name, "err", err)
		return
	}
	if f.openGen(idOf(fi)) != nil { // the same file, or one followed under another name
		fh.Close()
		return
	}
	rotated := e.cur != nil || len(e.old) > 0
	if e.cur != nil {
		f.retire(e)
	}
	for _, g := range e.old {
		f.startGrace(g)
	}
	known := f.reopen(e, fh, fi)
	if known != nil {
		e.cur = known
	} else {
		e.cur = f.newGen(e, fh, fi, 0)
	}
	switch {
	case rotated:
		f.count(e.name, func(s *FileStats) { s.Rotations++ })
		f.rotated(e.name)
		f.log.Info("log rotated; reading the new file, and the old one for the grace period", keyPath, e.name, "grace", f.opts.Grace)
	case known == nil:
		f.log.Info("log appeared; reading it from its beginning", keyPath, e.name)
	}
}

func (f *Follower) retire(e *entry) {
	g := e.cur
	e.cur = nil
	e.old = append(e.old, g)
	g.readable = true
	f.scheduleSave()
}

func (f *Follower) startGrace(g *gen) {
	if g.graceStarted {
		return
	}
	g.graceStarted = true
	g.grace = f.clock.AfterFunc(f.opts.Grace, f.post(func() {
		g.grace = nil
		g.expiring = true
		g.readable = true
	}))
}

func (f *Follower) closeGen(g *gen) {
	e := g.e
	if len(g.partial) > 0 {
		f.log.Warn("unfinished last line of rotated log dropped", keyPath, e.name, "bytes", len(g.partial))
	}
	// Remembered while it exists, so that it is never read again from its start.
	if target, err := os.Readlink(g.watch); err == nil && !strings.HasSuffix(target, " (deleted)") {
		if h, err := firstLineHash(g.f); err == nil {
			g.name, g.hash, g.partial = target, h, nil
			f.remember(g)
		}
	}
	if err := f.w.Remove(g.watch); err != nil && !errors.Is(err, fsnotify.ErrNonExistentWatch) {
		f.log.Debug("remove watch", keyPath, e.name, "err", err)
	}
	delete(f.byWatch, g.watch)
	g.f.Close()
	e.old = slices.DeleteFunc(e.old, func(x *gen) bool { return x == g })
	f.log.Info("finished reading rotated log", keyPath, e.name)
	f.scheduleSave()
}

// post makes fn, called from a Clock's goroutine, run in the loop.
func (f *Follower) post(fn func()) func() {
	return func() {
		select {
		case f.timers <- fn:
		case <-f.ctx.Done():
		}
	}
}

// scheduleSave saves the positions in saveDelay unless a save is already
// scheduled: at most one save a second however busy, none when idle.
func (f *Follower) scheduleSave() {
	if f.saveTimer != nil || f.opts.StateDir == "" {
		return
	}
	f.saveTimer = f.clock.AfterFunc(saveDelay, f.post(func() {
		f.saveTimer = nil
		f.ackSignalled.Store(false) // an Ack from now on schedules the next save
		if err := f.save(); err != nil {
			f.log.Warn("cannot save log positions", "err", err)
			return
		}
		f.log.Debug("log positions saved")
	}))
}

func (f *Follower) save() error {
	if f.opts.StateDir == "" {
		return nil
	}
	var ps []position
	for _, e := range f.order {
		for g := range e.all {
			if p, ok := f.position(g); ok {
				ps = append(ps, p)
			}
		}
	}
	// Closed files are forgotten once their name no longer shows them.
	var closed []*gen
	for id, g := range f.closed {
		if fi, err := os.Stat(g.name); err != nil || idOf(fi) != id {
			delete(f.closed, id)
			continue
		}
		closed = append(closed, g)
	}
	slices.SortFunc(closed, func(a, b *gen) int { return cmp.Compare(a.seq, b.seq) })
	for _, g := range closed {
		f.ackMu.Lock()
		off := g.ackOff
		f.ackMu.Unlock()
		ps = append(ps, position{Path: g.name, Dev: g.id.Dev, Ino: g.id.Ino, Offset: off, FirstLine: g.hash, Closed: true})
	}
	return savePositions(f.opts.StateDir, ps)
}

func (f *Follower) position(g *gen) (position, bool) {
	f.ackMu.Lock()
	off := g.ackOff
	f.ackMu.Unlock()
	h, err := firstLineHash(g.f)
	if err != nil {
		f.log.Warn("cannot read first line; position not saved", keyPath, g.e.name, "err", err)
		return position{}, false
	}
	p := position{Path: g.e.name, Dev: g.id.Dev, Ino: g.id.Ino, Offset: off, FirstLine: h}
	if g != g.e.cur {
		// Where the rotated file is now, to read its rest after a restart;
		// a deleted one cannot be found again.
		target, err := os.Readlink(g.watch)
		if err != nil || strings.HasSuffix(target, " (deleted)") {
			return position{}, false
		}
		p.Rotated = target
	}
	return p, true
}

func (f *Follower) watchError(err error) {
	if !errors.Is(err, fsnotify.ErrEventOverflow) {
		f.log.Warn("file watch error", "err", err)
		return
	}
	// Events were lost: look at every name and file again.
	f.log.Warn("file events overflowed; checking every log")
	f.verifyDirs()
	f.dirsChanged()
	for dir, pats := range f.dirs {
		for _, p := range pats {
			if hasMeta(p) {
				names, _ := filepath.Glob(filepath.Join(dir, p))
				for _, n := range names {
					f.addEntry(n)
				}
			}
		}
	}
	for _, e := range f.order {
		f.check(e)
		for g := range e.all {
			g.readable = true
		}
	}
	f.reviewMissing(false)
}

func (f *Follower) count(name string, inc func(*FileStats)) {
	f.statsMu.Lock()
	defer f.statsMu.Unlock()
	inc(&f.stats.FileStats)
	s := f.stats.Files[name]
	inc(&s)
	f.stats.Files[name] = s
}

func (f *Follower) shutdown() error {
	if f.saveTimer != nil {
		f.saveTimer.Stop()
		f.saveTimer = nil
	}
	if f.missingTimer != nil {
		f.missingTimer.Stop()
		f.missingTimer = nil
	}
	err := f.save()
	f.closeFiles()
	f.w.Close()
	close(f.batches)
	return err
}

func (f *Follower) closeFiles() {
	for _, e := range f.order {
		for g := range e.all {
			if g.grace != nil {
				g.grace.Stop()
			}
			g.f.Close()
		}
	}
}

func (f *Follower) rotated(name string) {
	if f.opts.OnRotate != nil {
		f.opts.OnRotate(name)
	}
}
