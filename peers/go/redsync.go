package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/go-redsync/redsync/v4"
	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	goredislib "github.com/redis/go-redis/v9"
)

const (
	redsyncModule = "github.com/go-redsync/redsync/v4"
	goredisModule = "github.com/redis/go-redis/v9"
)

// redsyncPeer is go-redsync's Redlock Mutex over one go-redis client per server (one pool
// each; redsync's quorum is len/2+1 of them). Only the expiry is set per lock; tries, retry
// delay, drift and timeout factors are redsync's defaults.
type redsyncPeer struct {
	rs      *redsync.Redsync
	clients []*goredislib.Client
}

// splitRedisURL turns `redis://[auth@]h1:p1,h2:p2[/db][?opts]` into one URL per host.
func splitRedisURL(url string) ([]string, error) {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok || (scheme != "redis" && scheme != "rediss") {
		return nil, fmt.Errorf("not a redis:// URL: %q (want redis://host:port[,host:port…])", url)
	}
	cut := len(rest)
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		cut = i
	}
	hosts, tail := rest[:cut], rest[cut:]
	auth := ""
	if i := strings.LastIndex(hosts, "@"); i >= 0 {
		auth, hosts = hosts[:i+1], hosts[i+1:]
	}
	var urls []string
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			urls = append(urls, scheme+"://"+auth+h+tail)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("no host in %q", url)
	}
	return urls, nil
}

func openRedsync(ctx context.Context, url string) (lockPeer, string, error) {
	urls, err := splitRedisURL(url)
	if err != nil {
		return nil, "", err
	}
	p := &redsyncPeer{}
	var pools []redsyncredis.Pool
	var down []string
	for _, u := range urls {
		opts, err := goredislib.ParseURL(u)
		if err != nil {
			p.close()
			return nil, "", err
		}
		c := goredislib.NewClient(opts)
		p.clients = append(p.clients, c)
		pools = append(pools, goredis.NewPool(c))
		if err := c.Ping(ctx).Err(); err != nil {
			down = append(down, fmt.Sprintf("%s (%v)", opts.Addr, err))
		}
	}
	if len(urls)-len(down) < len(urls)/2+1 {
		p.close()
		return nil, "", fmt.Errorf("no quorum of %d Redis servers reachable: %s", len(urls), strings.Join(down, "; "))
	}
	for _, d := range down {
		log.Printf("redsync: server not reachable at start: %s", d)
	}
	p.rs = redsync.New(pools...)
	version := "redsync-" + moduleVersion(redsyncModule) + "+go-redis-" + moduleVersion(goredisModule)
	return p, version, nil
}

// busy tells a failed attempt on a lock someone else holds (redsync's ErrTaken, a node's
// ErrNodeTaken, or ErrFailed after its tries) from a failure to talk to the servers.
func busy(err error) bool {
	var taken *redsync.ErrTaken
	var takenV redsync.ErrTaken
	var nodeTaken *redsync.ErrNodeTaken
	var nodeTakenV redsync.ErrNodeTaken
	return errors.Is(err, redsync.ErrFailed) ||
		errors.As(err, &taken) || errors.As(err, &takenV) ||
		errors.As(err, &nodeTaken) || errors.As(err, &nodeTakenV)
}

// lockUntilOurs is the blocking acquire: redsync's LockContext (32 tries, 50–250 ms apart by
// default) called again for as long as it gives up on a lock that is still taken. It returns
// ctx's error once ctx is done, and a server failure as it is.
func lockUntilOurs(ctx context.Context, m *redsync.Mutex) error {
	for {
		err := m.LockContext(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !busy(err) {
			return err
		}
	}
}

func unlockMutex(ctx context.Context, m *redsync.Mutex) error {
	ok, err := m.UnlockContext(ctx)
	if ok {
		return nil
	}
	if err == nil {
		err = errors.New("redsync: Unlock reached no quorum")
	}
	return err
}

func (p *redsyncPeer) acquire(ctx context.Context, name string, ttl time.Duration, wait bool) (heldLock, error) {
	m := p.rs.NewMutex(name, redsync.WithExpiry(ttl))
	if wait {
		if err := lockUntilOurs(ctx, m); err != nil {
			return nil, err
		}
		return &redsyncHeld{m}, nil
	}
	// TryLockContext is one attempt (Lock with WithTries(1)): SET NX PX on every server.
	tctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	err := m.TryLockContext(tctx)
	switch {
	case err == nil:
		return &redsyncHeld{m}, nil
	case busy(err):
		return nil, nil
	default:
		return nil, err
	}
}

type redsyncHeld struct{ m *redsync.Mutex }

func (h *redsyncHeld) release(ctx context.Context) error { return unlockMutex(ctx, h.m) }

func (p *redsyncPeer) worker(_ context.Context, name string, ttl time.Duration) (tpWorker, error) {
	return &redsyncWorker{m: p.rs.NewMutex(name, redsync.WithExpiry(ttl))}, nil
}

// redsyncWorker is one throughput goroutine's own Mutex (the clients are shared, as redsync's
// pools are meant to be).
type redsyncWorker struct{ m *redsync.Mutex }

func (w *redsyncWorker) lock(ctx context.Context) error   { return lockUntilOurs(ctx, w.m) }
func (w *redsyncWorker) unlock(ctx context.Context) error { return unlockMutex(ctx, w.m) }
func (w *redsyncWorker) close()                           {}

func (p *redsyncPeer) close() {
	for _, c := range p.clients {
		_ = c.Close()
	}
}
