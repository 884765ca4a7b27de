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
// keeps reporting writes after the file was renamed or deleted. Nothing
// polls: an idle follower sleeps in one select, and timers exist only while
// a grace period runs or positions wait to be saved.

import (
	"bytes"
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
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Start modes (FollowOptions.Start).
const (
	StartSaved     = "saved"     // resume each file where the last run stopped; elsewhere at the end
	StartEnd       = "end"       // only what is written from now on
	StartBeginning = "beginning" // existing content too
)

const (
	defaultGrace = 30 * time.Second
	saveDelay    = time.Second // an acknowledged position is saved at most this late
	readChunk    = 64 << 10
	keyPath      = "path"
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
	// OnRotate, if set, is called from the follower's goroutine when a file
	// is replaced (rotated, deleted and re-created) or truncated.
	OnRotate func(path string)
}

// Line is one line of a followed file.
type Line struct {
	File string // the name it was followed as (absolute), also for lines of its rotated predecessor
	Text []byte // without the newline; the follower never writes to it again

	g     *gen
	epoch int64 // truncations of g before the line was read
	end   int64 // offset just after its newline
}

// FollowStats counts what a Follower did, for all files and per followed name.
type FollowStats struct {
	FileStats
	Files map[string]FileStats
}

// FileStats counts the lines and events of one followed name.
type FileStats struct {
	Lines       int64 // lines delivered
	Rotations   int64 // the name came to hold another file (rename or delete, then create)
	Truncations int64 // the file shrank or was rewritten under us (copytruncate)
}

// Follower follows access logs across rotation; see Follow.
type Follower struct {
	opts   FollowOptions
	log    *slog.Logger
	clock  Clock
	w      *fsnotify.Watcher
	lines  chan Line
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	err    error // of the final save; read after done is closed

	acked  chan struct{} // capacity 1: Ack was called since the loop last looked
	timers chan func()   // Clock callbacks, run by the loop
	probe  chan chan int // tests: read all that can be read, report lines not yet delivered

	ackMu sync.Mutex // guards gen.ackEpoch and gen.ackOff

	statsMu sync.Mutex
	stats   FollowStats

	// Owned by the loop goroutine (and by Follow before it starts).
	dirs      map[string][]string // watched directory → file name patterns in it
	entries   map[string]*entry   // by followed name
	order     []*entry            // delivery round robin
	next      int                 // where the round robin resumes
	byWatch   map[string]*gen     // by inode watch name
	buf       []byte
	saveTimer Timer // non-nil while a save is scheduled
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

	off      int64  // next byte to read
	last     byte   // the byte at off-1, to notice the file was rewritten under us
	partial  []byte // an unfinished line, ending at off
	pending  []Line // read, not yet delivered
	readable bool   // there may be bytes after off
	epoch    int64  // truncations so far

	graceStarted bool
	grace        Timer
	expiring     bool // the grace period is over: read to the end, then close

	ackEpoch, ackOff int64 // guarded by Follower.ackMu
}

// Follow starts following o.Paths. Each file is positioned before Follow
// returns (so what is written afterwards is delivered); files that appear
// later, under a configured name or matching a glob, are read from their
// beginning. A file renamed or deleted away is still read until Grace after
// a new file takes its name. Stop with Close or by cancelling ctx.
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
	f := &Follower{
		opts:    o,
		log:     o.Logger,
		clock:   o.Clock,
		lines:   make(chan Line),
		done:    make(chan struct{}),
		acked:   make(chan struct{}, 1),
		timers:  make(chan func()),
		probe:   make(chan chan int),
		stats:   FollowStats{Files: map[string]FileStats{}},
		dirs:    map[string][]string{},
		entries: map[string]*entry{},
		byWatch: map[string]*gen{},
		buf:     make([]byte, readChunk),
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.clock == nil {
		f.clock = systemClock{}
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("follow: %w", err)
	}
	f.w = w
	f.ctx, f.cancel = context.WithCancel(ctx)
	if err := f.setup(); err != nil {
		f.cancel()
		f.closeFiles()
		w.Close()
		return nil, err
	}
	go f.loop()
	return f, nil
}

// Lines delivers the lines, in file order for each file.
func (f *Follower) Lines() <-chan Line { return f.lines }

// Ack records that the consumer has fully handled l, and every line of its
// file before it. Saved positions are those of acknowledged lines, so a line
// delivered but not acknowledged is delivered again after a restart.
func (f *Follower) Ack(l Line) {
	g := l.g
	if g == nil {
		return
	}
	f.ackMu.Lock()
	if l.epoch > g.ackEpoch || l.epoch == g.ackEpoch && l.end > g.ackOff {
		g.ackEpoch, g.ackOff = l.epoch, l.end
	}
	f.ackMu.Unlock()
	select {
	case f.acked <- struct{}{}:
	default:
	}
}

// Close stops following, saves the positions and closes Lines. It returns
// the error of that save.
func (f *Follower) Close() error {
	f.cancel()
	<-f.done
	return f.err
}

// Stats returns the counters so far.
func (f *Follower) Stats() FollowStats {
	f.statsMu.Lock()
	defer f.statsMu.Unlock()
	s := f.stats
	s.Files = maps.Clone(f.stats.Files)
	return s
}

func (f *Follower) setup() error {
	var pats []string
	for _, p := range f.opts.Paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return fmt.Errorf("follow %s: %w", p, err)
		}
		dir, base := filepath.Dir(abs), filepath.Base(abs)
		if hasMeta(dir) {
			return fmt.Errorf("follow %s: a pattern may only be in the file name", p)
		}
		if _, err := filepath.Match(base, ""); err != nil {
			return fmt.Errorf("follow %s: %w", p, err)
		}
		if _, ok := f.dirs[dir]; !ok {
			// Watched before it is listed, so that a file created in between is seen.
			if err := f.w.Add(dir); err != nil {
				return fmt.Errorf("follow %s: watch %s: %w", p, dir, err)
			}
		}
		f.dirs[dir] = append(f.dirs[dir], base)
		pats = append(pats, abs)
	}
	var saved []position
	if f.opts.Start == StartSaved {
		ps, err := loadPositions(f.opts.StateDir)
		if err != nil {
			f.log.Warn("saved positions unusable; every file starts at its end", "err", err)
		}
		saved = ps
	}
	for _, abs := range pats {
		names := []string{abs}
		if hasMeta(filepath.Base(abs)) {
			names, _ = filepath.Glob(abs) // the pattern was checked above
		}
		for _, n := range names {
			f.addEntry(n)
		}
	}
	for _, e := range f.order {
		f.openInitial(e, saved)
	}
	f.resumeRotated(saved)
	return nil
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
	if errors.Is(err, fs.ErrNotExist) {
		f.log.Info("log not there yet; read from its beginning once it appears", keyPath, e.name)
		return
	}
	if err != nil {
		f.log.Warn("cannot open log; tried again when it changes", keyPath, e.name, "err", err)
		return
	}
	if f.isOpen(idOf(fi)) {
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
		i := slices.IndexFunc(saved, func(p position) bool { return p.Path == e.name && p.Rotated == "" })
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
		if p.Rotated == "" || e == nil {
			continue
		}
		fh, fi, err := openLog(p.Rotated)
		if err != nil {
			f.log.Info("rotated log gone; its unread rest is lost", keyPath, p.Path, "rotated", p.Rotated, "err", err)
			continue
		}
		if f.isOpen(idOf(fi)) {
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
	g := &gen{e: e, f: fh, id: idOf(fi), off: off, readable: true, ackOff: off}
	if off > 0 {
		g.last = '\n' // every start offset is just after a line
	}
	g.watch = "/proc/self/fd/" + strconv.FormatUint(uint64(fh.Fd()), 10)
	if err := f.w.Add(g.watch); err != nil {
		f.log.Warn("cannot watch log; its lines may come late", keyPath, e.name, "err", err)
	}
	f.byWatch[g.watch] = g
	f.scheduleSave()
	return g
}

func (f *Follower) isOpen(id fileID) bool {
	for _, e := range f.order {
		for g := range e.all {
			if g.id == id {
				return true
			}
		}
	}
	return false
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
		var out chan<- Line
		var l Line
		if g != nil {
			out, l = f.lines, g.pending[0]
		}
		select {
		case <-f.ctx.Done():
			f.err = f.shutdown()
			return
		case out <- l:
			g.pending[0] = Line{}
			g.pending = g.pending[1:]
			f.next = k + 1
			f.count(g.e.name, func(s *FileStats) { s.Lines++ })
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
			n := 0
			for _, e := range f.order {
				for g := range e.all {
					n += len(g.pending)
				}
			}
			reply <- n
		}
	}
}

// fill reads the files that may have more, each only once its earlier lines
// are delivered, and closes rotated files whose grace period is over.
func (f *Follower) fill() {
	var finished []*gen // closed after the loop: closing changes entry.old
	for _, e := range f.order {
		for g := range e.all {
			if g.readable && len(g.pending) == 0 {
				f.read(g)
			}
			if g.expiring && !g.readable && len(g.pending) == 0 {
				finished = append(finished, g)
			}
		}
	}
	for _, g := range finished {
		f.closeGen(g)
	}
}

// ready picks the next file with a line to deliver: files in turn, and for
// one name the older files first.
func (f *Follower) ready() (*gen, int) {
	for i := range f.order {
		k := (f.next + i) % len(f.order)
		for g := range f.order[k].all {
			if len(g.pending) > 0 {
				return g, k
			}
		}
	}
	return nil, 0
}

// read reads g until it has a whole line or is at its end.
func (f *Follower) read(g *gen) {
	for len(g.pending) == 0 {
		// Reading from the byte before off too tells whether the file is
		// still the one we read: copytruncate may shrink it and the writer
		// fill it again past off before we look.
		from, skip := g.off, 0
		if from > 0 {
			from, skip = from-1, 1
		}
		n, err := g.f.ReadAt(f.buf, from)
		if err != nil && !errors.Is(err, io.EOF) {
			f.log.Warn("cannot read log; tried again when it changes", keyPath, g.e.name, "err", err)
			g.readable = false
			return
		}
		if skip == 1 && (n == 0 || f.buf[0] != g.last || n > 1 && f.rewritten(g, from)) {
			f.truncated(g)
			continue
		}
		f.split(g, f.buf[skip:n])
		if n < len(f.buf) {
			g.readable = false
			return
		}
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

// split appends the whole lines of data, read at g.off, to g.pending.
func (f *Follower) split(g *gen, data []byte) {
	if len(data) == 0 {
		return
	}
	g.off += int64(len(data))
	g.last = data[len(data)-1]
	i := bytes.LastIndexByte(data, '\n')
	if i < 0 {
		g.partial = append(g.partial, data...)
		return
	}
	// One allocation for all lines of this read; each Text is capped so
	// that appending to it cannot overwrite the next line.
	chunk := make([]byte, 0, len(g.partial)+i+1)
	chunk = append(append(chunk, g.partial...), data[:i+1]...)
	base := g.off - int64(len(data)) - int64(len(g.partial))
	g.partial = append(g.partial[:0], data[i+1:]...)
	if len(g.partial) == 0 && cap(g.partial) > readChunk {
		g.partial = nil // do not keep the buffer of one long line
	}
	for pos := 0; pos < len(chunk); {
		end := pos + bytes.IndexByte(chunk[pos:], '\n')
		g.pending = append(g.pending, Line{
			File: g.e.name, Text: chunk[pos:end:end],
			g: g, epoch: g.epoch, end: base + int64(end) + 1,
		})
		pos = end + 1
	}
}

func (f *Follower) truncated(g *gen) {
	f.log.Info("log truncated; reading it from its start", keyPath, g.e.name, "offset", g.off)
	if len(g.partial) > 0 {
		f.log.Warn("unfinished line lost to truncation", keyPath, g.e.name, "bytes", len(g.partial))
	}
	g.off, g.last, g.partial = 0, 0, nil
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
		}
		return
	}
	if e := f.entries[name]; e != nil {
		// Writes are seen on the inode; the directory tells what the name holds.
		if ev.Op&^fsnotify.Write != 0 || e.cur == nil {
			f.check(e)
		}
		return
	}
	if _, ok := f.dirs[name]; ok && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
		f.log.Warn("log directory gone; files created in it are no longer seen", keyPath, name)
		return
	}
	if ev.Has(fsnotify.Create) && f.matches(name) {
		f.check(f.addEntry(name))
	}
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
	if errors.Is(err, fs.ErrNotExist) {
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
	id := idOf(fi)
	if f.isOpen(id) { // the same file, or one followed under another name
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
	e.cur = f.newGen(e, fh, fi, 0)
	if rotated {
		f.count(e.name, func(s *FileStats) { s.Rotations++ })
		f.rotated(e.name)
		f.log.Info("log rotated; reading the new file, and the old one for the grace period", keyPath, e.name, "grace", f.opts.Grace)
	} else {
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
	err := f.save()
	f.closeFiles()
	f.w.Close()
	close(f.lines)
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
