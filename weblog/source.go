package weblog

import (
	"bytes"
	"iter"
)

// Source is an input of log lines: the Follower of log files, the
// syslog listener. The daemon selects over the sources it has, handles
// each batch and acknowledges it.
type Source interface {
	// Batches delivers the lines, a batch at a time, each source's in
	// the order it received them.
	Batches() <-chan Batch
	// Ack records that b is fully handled and takes its memory back.
	Ack(b Batch)
	// CaughtUp reports whether nothing received is left to deliver
	// beyond the batch being handed over.
	CaughtUp() bool
	// Close stops the source.
	Close() error
}

var _ Source = (*Follower)(nil)

// Batch is whole lines of one source, in the order it received them: the
// lines of one read of one followed file.
type Batch struct {
	// Source is where the lines came from, for metrics and logs. For a
	// file, the name it is followed as (absolute), also for a rotated
	// predecessor during its grace period; after it, a rotated file that
	// a glob matches (access.log.1) is followed under that name.
	Source string
	// Text is the lines, each with its newline; never empty. Lines over
	// MaxLineBytes are left out. It is valid until b is acknowledged: the
	// source then reuses its memory.
	Text []byte

	n int // lines in Text

	// The follower's: where the batch ends in which file.
	g     *gen
	epoch int64 // truncations of g before the batch was read
	end   int64 // offset just after the read's last newline
	buf   *batchBuf
	id    uint64 // of the batch, for buf

	// The syslog listener's: the memory Ack takes back, and the batch's id.
	sbuf *syslogBuf
	sid  uint64
}

// Len returns the number of lines in b.
func (b Batch) Len() int { return b.n }

// Lines yields the lines of b, without their newlines.
func (b Batch) Lines() iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for rest := b.Text; len(rest) > 0; {
			i := bytes.IndexByte(rest, '\n')
			if !yield(rest[:i:i]) {
				return
			}
			rest = rest[i+1:]
		}
	}
}
