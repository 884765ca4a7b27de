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

	"github.com/nats-io/nats.go"
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
const queueLen = 65536

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

// inflight is a grant sent, its acknowledgement to come.
type inflight struct {
	j job
	f jetstream.PubAckFuture
}

// maxInFlight bounds the grants sent and not yet acknowledged.
const maxInFlight = 256

func (p *Publisher) loop() {
	defer close(p.done)
	var sent []inflight
	for {
		select {
		case <-p.ctx.Done():
			return
		case j := <-p.queue:
			if j.revoke != nil {
				sent = p.settle(sent) // the grants before it first
				p.withdraw(p.ctx, j.revoke)
				continue
			}
			if f, err := p.send(p.ctx, j); err != nil {
				p.result(j.g, err)
			} else {
				sent = append(sent, inflight{j, f})
			}
			if len(p.queue) == 0 || len(sent) >= maxInFlight {
				sent = p.settle(sent)
			}
		}
	}
}

// settle waits for the acknowledgements of sent; a grant the bus did not
// take is published again, one at a time, as publish does.
func (p *Publisher) settle(sent []inflight) []inflight {
	for _, s := range sent {
		var err error
		select {
		case <-s.f.Ok():
		case err = <-s.f.Err():
		case <-time.After(callTimeout):
			err = errors.New("no acknowledgement")
		case <-p.ctx.Done():
			return nil
		}
		if err != nil {
			p.log.Debug("fleet: the bus did not take a grant; retrying", keyErr, err)
			err = p.publish(p.ctx, s.j)
		}
		p.result(s.j.g, err)
	}
	return sent[:0]
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

// send marks j's one-time step used (waiting for the bus's answer: the
// grant depends on it) and sends its grant without waiting for the
// acknowledgement, which settle collects.
func (p *Publisher) send(ctx context.Context, j job) (jetstream.PubAckFuture, error) {
	if err := p.ready(j); err != nil {
		return nil, err
	}
	if err := p.retry(ctx, func(ctx context.Context) error { return p.mark(ctx, j) }); err != nil {
		return nil, err
	}
	value, err := sign(j.g, p.o.Client.group, p.o.Detector, p.o.Key)
	if err != nil {
		return nil, err
	}
	f, err := p.o.Client.js.PublishMsgAsync(&nats.Msg{Subject: p.subject(j.g), Data: value}, jetstream.WithMsgTTL(p.ttl(j.g)))
	if err != nil {
		return nil, p.publish(ctx, j)
	}
	return f, nil
}

// ready refuses a grant the bus cannot take now: disconnected, or over.
func (p *Publisher) ready(j job) error {
	if !p.o.Client.Connected() {
		return refuse(RefusedUnavailable, "not connected to the bus")
	}
	if !j.g.Until.After(p.o.Now()) {
		return refuse(RefusedExpired, "the grant ended before it could be published")
	}
	return nil
}

// publish marks j's one-time step used and puts its grant, waiting for the
// bus's answers. A stream that has just lost its leader answers again
// once the cluster has chosen another: that is retried, for a while,
// while connected; a bus that is away fails at once.
func (p *Publisher) publish(ctx context.Context, j job) error {
	if err := p.ready(j); err != nil {
		return err
	}
	value, err := sign(j.g, p.o.Client.group, p.o.Detector, p.o.Key)
	if err != nil {
		return err
	}
	return p.retry(ctx, func(ctx context.Context) error {
		if err := p.mark(ctx, j); err != nil {
			return err
		}
		_, err := p.o.Client.js.Publish(ctx, p.subject(j.g), value, jetstream.WithMsgTTL(p.ttl(j.g)))
		return err
	})
}

// subject is where g's key is put.
func (p *Publisher) subject(g Grant) string {
	return "$KV." + GrantsBucket(p.o.Client.group) + "." + Key(g.Source, g.Sequence)
}

// ttl is g's remaining time in whole seconds, rounded up: the kernel ends
// the grant on time; its key may outlive it by under a second.
func (p *Publisher) ttl(g Grant) time.Duration {
	return max(g.Until.Sub(p.o.Now()).Truncate(time.Second)+time.Second, minTTL)
}

// mark opens the buckets and marks j's one-time step used, if it has one.
// The mark names the grant, so that a second try of the same grant (its
// first answer lost) knows the mark for its own.
func (p *Publisher) mark(ctx context.Context, j job) error {
	_, used, err := p.buckets(ctx)
	if err != nil || j.used == nil {
		return err
	}
	return p.markUsed(ctx, used, j.used, []byte(p.o.Detector+" "+formatSource(j.g.Source)+" "+strconv.FormatInt(j.g.Knocked.UnixNano(), 10)))
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
