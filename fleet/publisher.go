package fleet

// The detector's side: grants into the bucket, in the order they came,
// from a goroutine of their own so that the bus never holds up the log.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// PublisherOptions configure a detector.
type PublisherOptions struct {
	Client   *Client
	Key      ed25519.PrivateKey
	Detector string // this host's name, signed into every record
	Replicas int    // of the buckets, when the detector creates them
	Logger   *slog.Logger
	Now      func() time.Time // nil: time.Now
	// OnResult is told of every grant taken by Publish: nil error when
	// the bus stored it, else why not (Reason tells). It runs on the
	// publisher's goroutine and must not block.
	OnResult func(g Grant, err error)
}

// Used is a one-time step a grant spends: Step of Sequence, marked in the
// used bucket for TTL (as long as a path of it could still be accepted).
type Used struct {
	Sequence string
	Step     int64
	TTL      time.Duration
}

// job is a grant to publish, or (revoke set) grants to delete.
type job struct {
	g      Grant
	used   *Used
	revoke *revokeJob
}

type revokeJob struct {
	source   netip.Prefix
	sequence string
}

// queueLen bounds the grants waiting for the bus; beyond it a grant is
// refused at once (the bus is too slow or away).
const queueLen = 4096

// Publisher puts grants into the bucket.
type Publisher struct {
	o     PublisherOptions
	log   *slog.Logger
	queue chan job
	done  chan struct{}
	stop  context.CancelFunc
	ctx   context.Context

	mu     sync.Mutex
	grants jetstream.KeyValue // nil until opened
	used   jetstream.KeyValue

	published atomic.Uint64
	failed    sync.Map // reason -> *atomic.Uint64
}

// NewPublisher starts a detector's publisher; Close stops it.
func NewPublisher(o PublisherOptions) *Publisher {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.OnResult == nil {
		o.OnResult = func(Grant, error) {}
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{o: o, log: log, queue: make(chan job, queueLen), done: make(chan struct{}), stop: cancel, ctx: ctx}
	go p.loop()
	return p
}

// Publish queues g for the bus, after marking used as spent when it is
// not nil. The result goes to OnResult.
func (p *Publisher) Publish(g Grant, used *Used) {
	select {
	case p.queue <- job{g: g, used: used}:
	default:
		p.result(g, refuse(RefusedUnavailable, "%d grants wait for the bus already", queueLen))
	}
}

// Close stops the publisher; grants still queued are dropped (fail closed).
func (p *Publisher) Close() {
	p.stop()
	<-p.done
}

func (p *Publisher) loop() {
	defer close(p.done)
	for {
		select {
		case <-p.ctx.Done():
			return
		case j := <-p.queue:
			if j.revoke != nil {
				p.withdraw(p.ctx, j.revoke)
				continue
			}
			p.result(j.g, p.publish(p.ctx, j))
		}
	}
}

func (p *Publisher) result(g Grant, err error) {
	if err == nil {
		p.published.Add(1)
	} else {
		r := Reason(err)
		if r == "" {
			r = RefusedUnavailable
		}
		n, _ := p.failed.LoadOrStore(r, new(atomic.Uint64))
		n.(*atomic.Uint64).Add(1)
	}
	p.o.OnResult(g, err)
}

// buckets opens (creating if need be) the group's buckets.
func (p *Publisher) buckets(ctx context.Context) (grants, used jetstream.KeyValue, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.grants == nil {
		kv, err := p.o.Client.bucket(ctx, GrantsBucket(p.o.Client.group), true, p.o.Replicas)
		if err != nil {
			return nil, nil, fmt.Errorf("bucket %s: %w", GrantsBucket(p.o.Client.group), err)
		}
		p.grants = kv
	}
	if p.used == nil {
		kv, err := p.o.Client.bucket(ctx, UsedBucket(p.o.Client.group), true, p.o.Replicas)
		if err != nil {
			return nil, nil, fmt.Errorf("bucket %s: %w", UsedBucket(p.o.Client.group), err)
		}
		p.used = kv
	}
	return p.grants, p.used, nil
}

// minTTL is the shortest TTL the bus takes.
const minTTL = time.Second

func (p *Publisher) publish(ctx context.Context, j job) error {
	if !p.o.Client.Connected() {
		return refuse(RefusedUnavailable, "not connected to the bus")
	}
	left := j.g.Until.Sub(p.o.Now())
	if left <= 0 {
		return refuse(RefusedExpired, "the grant ended before it could be published")
	}
	value, err := sign(j.g, p.o.Client.group, p.o.Detector, p.o.Key)
	if err != nil {
		return err
	}
	var used jetstream.KeyValue
	mark := []byte(p.o.Detector + " " + formatSource(j.g.Source) + " " + strconv.FormatInt(j.g.Knocked.UnixNano(), 10))
	marked := j.used == nil
	// A stream that has just lost its leader answers again once the
	// cluster has chosen another: retry that, for a while, while
	// connected; a bus that is away fails at once.
	return p.retry(ctx, func(ctx context.Context) error {
		if used == nil {
			var err error
			if _, used, err = p.buckets(ctx); err != nil {
				return err
			}
		}
		if !marked {
			if err := p.markUsed(ctx, used, j.used, mark); err != nil {
				return err
			}
			marked = true
		}
		// Whole seconds, rounded up: the kernel ends the grant on time;
		// the key may outlive it by under a second.
		ttl := max(j.g.Until.Sub(p.o.Now()).Truncate(time.Second)+time.Second, minTTL)
		_, err := p.o.Client.js.Publish(ctx, "$KV."+GrantsBucket(p.o.Client.group)+"."+Key(j.g.Source, j.g.Sequence), value,
			jetstream.WithMsgTTL(ttl))
		return err
	})
}

// markUsed creates the used step's key, unless it exists: then the step
// was used, by another detector (or by this grant, when an earlier try's
// answer was lost: its mark is this one).
func (p *Publisher) markUsed(ctx context.Context, used jetstream.KeyValue, u *Used, mark []byte) error {
	key := usedKey(u.Sequence, u.Step)
	_, err := used.Create(ctx, key, mark, jetstream.KeyTTL(max(u.TTL, minTTL)))
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	if e, gerr := used.Get(ctx, key); gerr == nil && string(e.Value()) == string(mark) {
		return nil
	}
	return refuse(RefusedUsed, "one-time step %d of %s was used already (by another detector)", u.Step, u.Sequence)
}

// Retrying a call to the bus: how long in all, and how often.
const (
	retryFor   = 10 * time.Second
	retryEvery = 250 * time.Millisecond
)

// retry calls fn (each call with its own deadline) until it succeeds,
// fails for good (a refusal), the client is disconnected, or retryFor has
// passed.
func (p *Publisher) retry(ctx context.Context, fn func(ctx context.Context) error) error {
	start := p.o.Now()
	for {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := fn(cctx)
		cancel()
		switch {
		case err == nil:
			return nil
		case Reason(err) != "":
			return err
		case !p.o.Client.Connected() || ctx.Err() != nil || p.o.Now().Sub(start) >= retryFor:
			return refuse(RefusedUnavailable, "%v", err)
		}
		p.log.Debug("fleet: the bus did not take a grant; retrying", keyErr, err)
		select {
		case <-ctx.Done():
			return refuse(RefusedUnavailable, "%v", err)
		case <-time.After(retryEvery):
		}
	}
}

// usedKey is the key of a used one-time step: SEQUENCE.STEP.
func usedKey(sequence string, step int64) string {
	return sequence + "." + strconv.FormatInt(step, 10)
}

// Withdraw queues Revoke of the grants of sequence (all when "") whose
// source overlaps pfx, after the grants queued before it; the outcome is
// logged.
func (p *Publisher) Withdraw(pfx netip.Prefix, sequence string) {
	select {
	case p.queue <- job{revoke: &revokeJob{pfx, sequence}}:
	default:
		p.log.Error("fleet: revoke not published: too many grants wait for the bus; enforcers keep the grant until it ends", keySource, formatSource(pfx))
	}
}

func (p *Publisher) withdraw(ctx context.Context, r *revokeJob) {
	n, err := p.Revoke(ctx, r.source, r.sequence)
	switch {
	case err != nil:
		p.log.Error("fleet: revoke not published: enforcers keep the grant until it ends", keySource, formatSource(r.source), keyErr, err)
	case n > 0:
		p.log.Info("fleet: revoke published", keySource, formatSource(r.source), keyCount, n)
	}
}

// Revoke deletes from the bucket the grants (of sequence, or all when "")
// whose source overlaps p, so that every enforcer ends them at once; it
// returns how many.
func (p *Publisher) Revoke(ctx context.Context, pfx netip.Prefix, sequence string) (int, error) {
	if !p.o.Client.Connected() {
		return 0, errors.New("fleet: not connected to the bus")
	}
	grants, _, err := p.buckets(ctx)
	if err != nil {
		return 0, err
	}
	cctx, cancel := context.WithTimeout(ctx, 4*callTimeout)
	defer cancel()
	lister, err := grants.ListKeys(cctx)
	if err != nil {
		return 0, err
	}
	var keys []string
	for k := range lister.Keys() {
		src, seq, ok := parseKey(k)
		if ok && src.Overlaps(pfx) && (sequence == "" || seq == sequence) {
			keys = append(keys, k)
		}
	}
	if err := lister.Stop(); err != nil && !errors.Is(err, context.Canceled) {
		p.log.Debug("fleet: key listing", keyErr, err)
	}
	for _, k := range keys {
		if err := grants.Delete(cctx, k); err != nil {
			return 0, fmt.Errorf("fleet: delete %s: %w", k, err)
		}
	}
	return len(keys), nil
}

// parseKey reads a key Key wrote.
func parseKey(k string) (netip.Prefix, string, bool) {
	seq, rest, ok := strings.Cut(k, ".")
	i := strings.LastIndexByte(rest, '.')
	if !ok || i < 0 {
		return netip.Prefix{}, "", false
	}
	a, bits := rest[:i], rest[i+1:]
	n, err := strconv.Atoi(bits)
	if err != nil {
		return netip.Prefix{}, "", false
	}
	var s string
	if strings.Count(a, "-") == 3 && !strings.Contains(a, "--") {
		s = strings.ReplaceAll(a, "-", ".")
	} else {
		s = strings.ReplaceAll(a, "-", ":")
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, "", false
	}
	pfx, err := addr.Prefix(n)
	if err != nil || pfx.Addr() != addr || Key(pfx, seq) != k {
		return netip.Prefix{}, "", false
	}
	return pfx, seq, true
}

// Counts returns how many grants were published, and how many were not,
// by reason.
func (p *Publisher) Counts() (published uint64, failed map[string]uint64) {
	failed = map[string]uint64{}
	p.failed.Range(func(k, v any) bool {
		failed[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return p.published.Load(), failed
}
