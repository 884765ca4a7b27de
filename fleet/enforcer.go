package fleet

// The enforcer's side: the bucket's grants into the local firewall.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Applier is the local firewall, as the enforcer uses it.
type Applier interface {
	// Apply opens v's ports to v's source until v.Until.
	Apply(ctx context.Context, v Verified) error
	// Remove ends at once the grant of g.Source to g.Sequence.
	Remove(ctx context.Context, g Grant) error
	// Held returns the live grants Apply made (and a restart kept).
	Held() []Grant
}

// EnforcerOptions configure an enforcer.
type EnforcerOptions struct {
	Client  *Client
	Trusted []ed25519.PublicKey
	// Window returns the window of this host's sequence, false when it has
	// no such sequence. A grant must end within it from now.
	Window func(sequence string) (time.Duration, bool)
	Apply  Applier
	Logger *slog.Logger
	Now    func() time.Time // nil: time.Now
	// Skew is how far apart the clocks of detectors and enforcers may be;
	// default DefaultSkew.
	Skew time.Duration
	// OnSnapshot is told, after every snapshot of the bucket (at start and
	// after each reconnect), how many grants it applied and how many held
	// ones it removed because the bucket no longer has them.
	OnSnapshot func(applied, removed int)
}

// DefaultSkew is how far apart the fleet's clocks may be by default.
const DefaultSkew = 2 * time.Second

// Results of the records an enforcer receives, as counted.
const (
	ResultApplied = "applied" // a grant applied (or extended)
	ResultRevoked = "revoked" // a deleted key ended a grant
)

// Enforcer applies the bucket's grants.
type Enforcer struct {
	o   EnforcerOptions
	log *slog.Logger

	applied map[string]Grant // by key: what this enforcer applied

	counts sync.Map // result or refusal reason -> *atomic.Uint64
}

// NewEnforcer returns an enforcer; Run runs it.
func NewEnforcer(o EnforcerOptions) *Enforcer {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Skew == 0 {
		o.Skew = DefaultSkew
	}
	if o.OnSnapshot == nil {
		o.OnSnapshot = func(int, int) {}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Enforcer{o: o, log: log, applied: map[string]Grant{}}
}

// retryWait is how long the enforcer waits before it watches again after
// a failure (the bucket missing, the bus away).
const retryWait = time.Second

// Run watches the bucket and applies its grants until ctx ends. After
// every reconnect it watches afresh: the snapshot that starts each watch
// is reconciled with what is held.
func (e *Enforcer) Run(ctx context.Context) {
	reconnected := e.o.Client.reconnects()
	for ctx.Err() == nil {
		err := e.watch(ctx, reconnected)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.Debug("fleet: watching the grants again", keyErr, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
		case <-time.After(retryWait):
		}
	}
}

// errReconnected ends a watch when the client reconnected.
var errReconnected = errors.New("reconnected to the bus")

// watch takes one snapshot of the bucket, then its updates, until the
// connection is made again or the watch fails.
func (e *Enforcer) watch(ctx context.Context, reconnected <-chan struct{}) error {
	if !e.o.Client.Connected() {
		return errors.New("not connected")
	}
	kv, err := e.o.Client.bucket(ctx, GrantsBucket(e.o.Client.group), false, 0)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.WatchAll(wctx)
	if err != nil {
		return err
	}
	// Stopping deletes the consumer on the bus, which may wait for a new
	// stream leader: the next watch need not.
	defer func() { go w.Stop() }()
	seen := map[string]bool{} // keys of the snapshot
	applied := 0
	snapshot := true
	// The watch's consumer lives on one server of the cluster: when that
	// server dies, the client notices only when two heartbeats (5 s
	// apart) are missed. Meanwhile the stream goes on: a watch that
	// stays behind the stream's last sequence is made again.
	check := time.NewTicker(stallCheck)
	defer check.Stop()
	var lastRev uint64
	lagging, lagRev := false, uint64(0) // behind at the last check, and where the watch was then
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-reconnected:
			return errReconnected
		case <-check.C:
			if snapshot {
				continue
			}
			// Behind at two checks in a row, with nothing delivered
			// between them: stalled (a message in flight is delivered
			// well within a check's period).
			last, ok := e.lastSeq(ctx, kv)
			behind := ok && last > lastRev
			if behind && lagging && lastRev == lagRev {
				return errors.New("the watch fell behind the bucket")
			}
			lagging, lagRev = behind, lastRev
		case ent, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch ended")
			}
			if ent == nil {
				if snapshot {
					snapshot = false
					// Messages the snapshot skipped (history, keys
					// removed since) count as delivered.
					if last, ok := e.lastSeq(ctx, kv); ok {
						lastRev = max(lastRev, last)
					}
					removed := e.reconcile(ctx, seen)
					e.log.Info("fleet: grants of the bus applied", keyCount, applied, "removed", removed)
					e.o.OnSnapshot(applied, removed)
				}
				continue
			}
			lastRev = max(lastRev, ent.Revision())
			did, valid := e.entry(ctx, ent)
			if did && snapshot {
				applied++
			}
			if snapshot && valid {
				seen[ent.Key()] = true
			}
		}
	}
}

// stallCheck is how often a watch is checked against the stream.
const stallCheck = time.Second

// lastSeq returns the last sequence of the bucket's stream; false when
// the stream cannot tell now.
func (e *Enforcer) lastSeq(ctx context.Context, kv jetstream.KeyValue) (uint64, bool) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, false
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return 0, false
	}
	return bs.StreamInfo().State.LastSeq, true
}

// entry handles one change of the bucket; it reports whether it applied a
// grant, and whether the entry is a record signed by a trusted key (a
// held grant whose key now holds anything else, or whose signer is no
// longer trusted, goes at the reconcile).
func (e *Enforcer) entry(ctx context.Context, ent jetstream.KeyValueEntry) (applied, valid bool) {
	key := ent.Key()
	switch ent.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		g, ok := e.applied[key]
		if !ok {
			return false, false
		}
		delete(e.applied, key)
		// A purge is the key's TTL running out: the kernel ends the grant
		// itself. A delete is a revoke, and so is a purge of a grant that
		// still has a while to go.
		if ent.Operation() == jetstream.KeyValuePurge && g.Until.Before(e.o.Now().Add(e.o.Skew)) {
			return false, false
		}
		e.revoke(ctx, key, g, "the key was deleted from the bus")
		return false, false
	}
	v, err := verify(key, ent.Value(), e.o.Client.group, e.o.Trusted)
	valid = err == nil
	if old, ok := e.applied[key]; ok && valid && old.Until.Equal(v.Until) {
		return true, true // seen before this watch: applied already
	}
	if err == nil {
		err = e.judge(v.Grant)
	}
	if err == nil {
		if err = e.o.Apply.Apply(ctx, v); err != nil {
			err = refuse(RefusedFirewall, "%v", err)
		}
	}
	if err != nil {
		e.count(Reason(err))
		e.log.Warn("fleet: grant refused", keyKey, key, keyReason, Reason(err), keyErr, err)
		return false, valid
	}
	e.count(ResultApplied)
	e.applied[key] = v.Grant
	e.log.Info("fleet: grant applied", keySource, formatSource(v.Source), keySequence, v.Sequence,
		keyUntil, v.Until, keyDetector, v.Detector, keyKey, v.KeyID)
	return true, true
}

// judge holds a verified grant to this host's sequences and clock.
func (e *Enforcer) judge(g Grant) error {
	now := e.o.Now()
	window, ok := e.o.Window(g.Sequence)
	switch {
	case !ok:
		return refuse(RefusedSequence, "sequence %s is not configured here", quote(g.Sequence))
	case !g.Until.After(now):
		return refuse(RefusedExpired, "the grant ended at %s", g.Until.UTC().Format(time.RFC3339))
	case g.Until.After(now.Add(window + e.o.Skew)):
		return refuse(RefusedWindow, "the grant ends at %s, beyond the sequence's window of %v from now", g.Until.UTC().Format(time.RFC3339), window)
	}
	return nil
}

// reconcile removes the held grants of the fleet that the snapshot (the
// keys seen) no longer has: revoked while this enforcer was away.
func (e *Enforcer) reconcile(ctx context.Context, seen map[string]bool) int {
	removed := 0
	now := e.o.Now()
	for _, g := range e.o.Apply.Held() {
		key := Key(g.Source, g.Sequence)
		if seen[key] || g.Until.Before(now.Add(e.o.Skew)) {
			continue // in the bucket, or ending now anyway
		}
		delete(e.applied, key)
		e.revoke(ctx, key, g, "the bus no longer has it")
		removed++
	}
	for key := range e.applied {
		if !seen[key] {
			delete(e.applied, key)
		}
	}
	return removed
}

func (e *Enforcer) revoke(ctx context.Context, key string, g Grant, why string) {
	if err := e.o.Apply.Remove(ctx, g); err != nil {
		e.log.Error("fleet: revoke failed", keyKey, key, keyErr, err)
		return
	}
	e.count(ResultRevoked)
	e.log.Info("fleet: grant revoked: "+why, keySource, formatSource(g.Source), keySequence, g.Sequence)
}

func (e *Enforcer) count(result string) {
	n, _ := e.counts.LoadOrStore(result, new(atomic.Uint64))
	n.(*atomic.Uint64).Add(1)
}

// Counts returns how many records were applied, revoked, and refused by
// reason (Refused…).
func (e *Enforcer) Counts() map[string]uint64 {
	out := map[string]uint64{}
	e.counts.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}
