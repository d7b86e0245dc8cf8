package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
)

const etcdModule = "go.etcd.io/etcd/client/v3"

// electionTryDeadline is how long `try` on etcd-election lets Campaign wait before calling the
// lock busy: an Election has no try of its own.
const electionTryDeadline = 100 * time.Millisecond

// etcdPeer is etcd's concurrency package: a Mutex (etcd-mutex) or an Election (etcd-election)
// per lock name, on Sessions (a lease each, kept alive by the client library).
//
// Lock NAME is the concurrency prefix NAME itself: the Mutex and the Election add "/" and
// write NAME/<lease id in hex>, which is exactly the key dlock's etcd backend writes for lock
// NAME under an etcd://host:port URL (no /PREFIX) and what `etcdctl lock NAME` writes. So one
// name is one lock for this peer, for dlock and for etcdctl; and since Mutex and Election lay
// out their keys the same way, for both of this harness's etcd peers too.
//
// etcd-rwmutex-read and etcd-rwmutex-write are etcd's recipes.RWMutex (RLock, Lock) on prefix
// NAME: readers write NAME/read/<UnixNano>, writers NAME/write/<UnixNano>, under the session's
// lease. A reader waits for older keys under NAME/write only, a writer for every older key
// under NAME/. The recipe's RLock and Lock take no context and have no try: `try` is an
// error, and a wait ended by a signal closes the session (revoking its lease, so its key
// goes) and leaves the blocked call behind until the process exits.
type etcdPeer struct {
	client   *clientv3.Client
	election bool
	// rw is "read" or "write" for the recipe's RWMutex, "" otherwise.
	rw string
	// value is what a Campaign proclaims (the Election's value; a Mutex writes "").
	value string

	mu   sync.Mutex
	idle map[int][]*concurrency.Session // by TTL in seconds
}

// etcdEndpoints turns `http://h:p[,http://h2:p2…]` (the scheme may be left out) into the
// client's endpoint list.
func etcdEndpoints(url string) ([]string, error) {
	var eps []string
	for _, e := range strings.Split(url, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if !strings.Contains(e, "://") {
			e = "http://" + e
		}
		eps = append(eps, strings.TrimSuffix(e, "/"))
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("no endpoint in %q (want http://host:port[,http://host:port…])", url)
	}
	return eps, nil
}

func openEtcd(ctx context.Context, url string, election bool, rw string) (lockPeer, string, error) {
	eps, err := etcdEndpoints(url)
	if err != nil {
		return nil, "", err
	}
	client, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, "", err
	}
	// clientv3.New does not wait for a connection: one linearizable read (what `etcdctl
	// endpoint health` reads) proves a member with a leader answers.
	if _, err := client.Get(ctx, "health"); err != nil {
		_ = client.Close()
		return nil, "", fmt.Errorf("etcd at %s: %w", strings.Join(eps, ","), err)
	}
	host, _ := os.Hostname()
	p := &etcdPeer{
		client:   client,
		election: election,
		rw:       rw,
		value:    fmt.Sprintf("dlock-peer-go@%s:%d", host, os.Getpid()),
		idle:     map[int][]*concurrency.Session{},
	}
	return p, "etcd-client-go-" + moduleVersion(etcdModule), nil
}

// ttlSeconds is the lease TTL for ttl: etcd leases count whole seconds, so it rounds up.
func ttlSeconds(ttl time.Duration) int {
	s := int((ttl + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// newSession grants a lease (bounded by ctx) and makes it a concurrency.Session, which keeps
// it alive (the client's KeepAlive: a refresh every TTL/3) until the session is closed.
func (p *etcdPeer) newSession(ctx context.Context, ttlS int) (*concurrency.Session, error) {
	gctx, cancel := context.WithTimeout(ctx, requestTimeout)
	lease, err := p.client.Grant(gctx, int64(ttlS))
	cancel()
	if err != nil {
		return nil, err
	}
	s, err := concurrency.NewSession(p.client, concurrency.WithLease(lease.ID), concurrency.WithTTL(ttlS))
	if err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		_, _ = p.client.Revoke(rctx, lease.ID)
		cancel()
		return nil, err
	}
	return s, nil
}

func alive(s *concurrency.Session) bool {
	select {
	case <-s.Done():
		return false
	default:
		return true
	}
}

// session hands out an idle session with this TTL, or a new one. One session per lock held at
// a time: a session's lease locking one name twice would be one acquisition (the same key).
func (p *etcdPeer) session(ctx context.Context, ttlS int) (*concurrency.Session, error) {
	p.mu.Lock()
	for list := p.idle[ttlS]; len(list) > 0; list = p.idle[ttlS] {
		s := list[len(list)-1]
		p.idle[ttlS] = list[:len(list)-1]
		if alive(s) {
			p.mu.Unlock()
			return s, nil
		}
		go p.discard(s) // its keep-alive ended (lease lost): never reused
	}
	p.mu.Unlock()
	return p.newSession(ctx, ttlS)
}

// putBack returns a session with no key of ours left under its lease to the idle pool.
func (p *etcdPeer) putBack(s *concurrency.Session, ttlS int) {
	if !alive(s) {
		p.discard(s)
		return
	}
	p.mu.Lock()
	if p.idle != nil {
		p.idle[ttlS] = append(p.idle[ttlS], s)
		s = nil
	}
	p.mu.Unlock()
	if s != nil { // closed meanwhile
		p.discard(s)
	}
}

// discard closes a session: its lease is revoked, and with it every key written under it (a
// cancelled Lock or Campaign may have left one behind).
func (p *etcdPeer) discard(s *concurrency.Session) {
	_ = s.Close()
}

func (p *etcdPeer) acquire(ctx context.Context, name string, ttl time.Duration, wait bool) (heldLock, error) {
	ttlS := ttlSeconds(ttl)
	s, err := p.session(ctx, ttlS)
	if err != nil {
		return nil, err
	}
	if p.election {
		return p.campaign(ctx, s, ttlS, name, wait)
	}
	if p.rw != "" {
		return p.rwLock(ctx, s, ttlS, name, wait)
	}
	m := concurrency.NewMutex(s, name)
	if wait {
		// Lock: put our key, and if an older key exists watch the next older one until it
		// is deleted (no polling); a cancelled Lock deletes its key.
		if err := m.Lock(ctx); err != nil {
			p.discard(s)
			return nil, err
		}
	} else {
		// TryLock: put our key; if an older one exists, delete ours and say ErrLocked.
		tctx, cancel := context.WithTimeout(ctx, requestTimeout)
		err := m.TryLock(tctx)
		cancel()
		if errors.Is(err, concurrency.ErrLocked) {
			p.putBack(s, ttlS)
			return nil, nil
		}
		if err != nil {
			p.discard(s)
			return nil, err
		}
	}
	return &etcdHeld{peer: p, session: s, ttlS: ttlS, unlock: m.Unlock}, nil
}

// campaign runs Election.Campaign: blocking for acquire; with a electionTryDeadline deadline
// for try, after which the lock counts as busy and the session is closed (revoked), so that no
// key of the abandoned campaign stays behind whatever step the deadline interrupted.
func (p *etcdPeer) campaign(ctx context.Context, s *concurrency.Session, ttlS int, name string, wait bool) (heldLock, error) {
	e := concurrency.NewElection(s, name)
	if wait {
		if err := e.Campaign(ctx, p.value); err != nil {
			p.discard(s)
			return nil, err
		}
	} else {
		cctx, cancel := context.WithTimeout(ctx, electionTryDeadline)
		err := e.Campaign(cctx, p.value)
		expired := cctx.Err() != nil
		cancel()
		if err != nil {
			p.discard(s)
			if expired && ctx.Err() == nil {
				return nil, nil
			}
			return nil, err
		}
	}
	return &etcdHeld{peer: p, session: s, ttlS: ttlS, unlock: e.Resign}, nil
}

// rwLock runs the recipe's RLock or Lock in a goroutine (they take no context), so that a
// signal can still end the wait.
func (p *etcdPeer) rwLock(ctx context.Context, s *concurrency.Session, ttlS int, name string, wait bool) (heldLock, error) {
	if !wait {
		p.putBack(s, ttlS)
		return nil, errors.New("etcd's recipes.RWMutex has no try (RLock and Lock block, without a context)")
	}
	rw := recipe.NewRWMutex(s, name)
	done := make(chan error, 1)
	go func() {
		if p.rw == "read" {
			done <- rw.RLock()
		} else {
			done <- rw.Lock()
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			p.discard(s)
			return nil, err
		}
	case <-ctx.Done():
		p.discard(s) // revokes the lease: our key goes; the blocked call stays behind
		return nil, ctx.Err()
	}
	unlock := func(context.Context) error { return rw.Unlock() }
	if p.rw == "read" {
		unlock = func(context.Context) error { return rw.RUnlock() }
	}
	return &etcdHeld{peer: p, session: s, ttlS: ttlS, unlock: unlock}, nil
}

// etcdHeld is a Mutex or an Election that is ours; unlock is Mutex.Unlock or Election.Resign.
type etcdHeld struct {
	peer    *etcdPeer
	session *concurrency.Session
	ttlS    int
	unlock  func(context.Context) error
}

func (h *etcdHeld) release(ctx context.Context) error {
	if err := h.unlock(ctx); err != nil {
		h.peer.discard(h.session) // the lease's revocation deletes the key instead
		return err
	}
	h.peer.putBack(h.session, h.ttlS)
	return nil
}

func (p *etcdPeer) worker(ctx context.Context, name string, ttl time.Duration) (tpWorker, error) {
	if p.rw == "write" {
		return nil, errors.New("not measured: etcd's recipes.RWMutex cannot stop a blocked Lock when the run ends")
	}
	s, err := p.newSession(ctx, ttlSeconds(ttl))
	if err != nil {
		return nil, err
	}
	w := &etcdWorker{peer: p, session: s}
	if p.rw == "read" {
		// RLock takes no context, but a run of readers only never waits: a reader waits
		// for earlier writer keys alone, and the run writes none.
		rw := recipe.NewRWMutex(s, name)
		w.lockFn = func(context.Context) error { return rw.RLock() }
		w.unlockFn = func(context.Context) error { return rw.RUnlock() }
	} else if p.election {
		e := concurrency.NewElection(s, name)
		w.lockFn = func(ctx context.Context) error { return e.Campaign(ctx, p.value) }
		w.unlockFn = e.Resign
	} else {
		m := concurrency.NewMutex(s, name)
		w.lockFn = m.Lock
		w.unlockFn = m.Unlock
	}
	return w, nil
}

// etcdWorker is one throughput goroutine's Mutex or Election, on a session of its own.
type etcdWorker struct {
	peer     *etcdPeer
	session  *concurrency.Session
	lockFn   func(context.Context) error
	unlockFn func(context.Context) error
}

func (w *etcdWorker) lock(ctx context.Context) error   { return w.lockFn(ctx) }
func (w *etcdWorker) unlock(ctx context.Context) error { return w.unlockFn(ctx) }
func (w *etcdWorker) close()                           { w.peer.discard(w.session) }

func (p *etcdPeer) close() {
	p.mu.Lock()
	var sessions []*concurrency.Session
	for _, list := range p.idle {
		sessions = append(sessions, list...)
	}
	p.idle = nil
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.discard(s)
		}()
	}
	wg.Wait()
	_ = p.client.Close()
}
