package fleet

// The connection to the bus, shared by a host's detector and enforcer.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ConnOptions say how to reach the bus.
type ConnOptions struct {
	Servers         []string // nats://HOST:PORT or tls://HOST:PORT
	Group           string
	CredentialsFile string // a NATS .creds file (JWT and seed), or ""
	CAFile          string // TLS: the CA that signed the servers' certificates
	CertFile        string // TLS: this client's certificate, when the servers ask for one
	KeyFile         string
	Name            string // shown by the servers (connz)
	Logger          *slog.Logger
}

// Attribute keys of the log.
const (
	keyErr      = "err"
	keyServer   = "server"
	keyKey      = "key"
	keyReason   = "reason"
	keySource   = "ip"
	keySequence = "sequence"
	keyUntil    = "until"
	keyDetector = "detector"
	keyCount    = "count"
)

// Client is a connection to the bus. It reconnects for ever; while it is
// down, publishes fail at once (nothing is buffered to be sent later).
type Client struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	group string
	log   *slog.Logger

	mu       sync.Mutex
	watchers []chan struct{} // told of every reconnect
}

// CheckServers checks the server URLs of the fleet configuration.
func CheckServers(servers []string) error {
	if len(servers) == 0 {
		return errors.New("at least one server required, like nats://10.0.0.5:4222")
	}
	for _, s := range servers {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "nats" && u.Scheme != "tls") || u.Host == "" || u.Port() == "" || u.Path != "" || u.User != nil {
			return fmt.Errorf("bad server %s: want nats://HOST:PORT or tls://HOST:PORT, credentials in credentials_file", quote(s))
		}
	}
	return nil
}

// Connect connects to the bus. It returns at once even when no server
// answers yet: the client keeps trying, and the daemon runs meanwhile
// (fail closed: no new grants until it is connected).
func Connect(o ConnOptions) (*Client, error) { return dial(o) }

// dial is Connect with more options (tests: a user and password).
func dial(o ConnOptions, more ...nats.Option) (*Client, error) {
	if err := CheckServers(o.Servers); err != nil {
		return nil, err
	}
	if err := CheckGroup(o.Group); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{group: o.Group, log: log}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1), // fail closed: never send a grant late
		nats.Timeout(2 * time.Second),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("fleet: connected to the bus", keyServer, nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("fleet: disconnected from the bus; no new grants until it is back", keyErr, err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("fleet: reconnected to the bus", keyServer, nc.ConnectedUrlRedacted())
			c.tellWatchers()
		}),
	}
	if o.CredentialsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredentialsFile))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	nc, err := nats.Connect(strings.Join(o.Servers, ","), append(opts, more...)...)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxInFlight), jetstream.WithPublishAsyncTimeout(callTimeout))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("fleet: %w", err)
	}
	c.nc, c.js = nc, js
	return c, nil
}

// Connected reports whether the client is connected now.
func (c *Client) Connected() bool { return c.nc.IsConnected() }

// Close closes the connection.
func (c *Client) Close() { c.nc.Close() }

// reconnects returns a channel that receives a value after every
// (re)connection that follows the call.
func (c *Client) reconnects() <-chan struct{} {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.watchers = append(c.watchers, ch)
	c.mu.Unlock()
	return ch
}

func (c *Client) tellWatchers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// bucketConfig is the configuration of the group's buckets: one value per
// key, per-key TTLs (their expiry leaves a marker watchers see).
func bucketConfig(name string, replicas int) jetstream.KeyValueConfig {
	if replicas < 1 {
		replicas = 1
	}
	return jetstream.KeyValueConfig{Bucket: name, History: 1, Replicas: replicas, MaxValueSize: maxRecord,
		Storage: jetstream.FileStorage, LimitMarkerTTL: markerTTL,
		Description: "webknock grants (github.com/webknock/webknock)"}
}

// markerTTL is how long the marker of an expired key stays: long enough
// for every enforcer's watcher to see it.
const markerTTL = 5 * time.Minute

// callTimeout bounds each request to the bus.
const callTimeout = 3 * time.Second

// bucket opens the named bucket, creating it when create is set.
func (c *Client) bucket(ctx context.Context, name string, create bool, replicas int) (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	kv, err := c.js.KeyValue(ctx, name)
	if err == nil || !create || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = c.js.CreateKeyValue(ctx, bucketConfig(name, replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		return c.js.KeyValue(ctx, name)
	}
	return kv, err
}
