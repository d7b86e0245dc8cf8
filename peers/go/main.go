// Command dlock-peer-go puts Go lock libraries behind the line protocol of peers/README.md:
//
//	dlock-peer-go PEER URL
//
// PEER is etcd-mutex (etcd's concurrency.Mutex), etcd-election (etcd's concurrency.Election),
// etcd-rwmutex-read / etcd-rwmutex-write (etcd's recipes.RWMutex, RLock / Lock) or redsync (go-redsync over go-redis). The harness connects, prints `ready PEER VERSION T`
// (or `unavailable PEER REASON` and exits 1), then answers one command per stdin line, one at
// a time, each reply written to stdout in a single write. Log output goes to stderr only.
// Each peer keeps its library's defaults except the lease length (see README.md here).
package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const usage = "usage: dlock-peer-go etcd-mutex|etcd-election|etcd-rwmutex-read|etcd-rwmutex-write|redsync URL"

const (
	// connectTimeout bounds connecting and the first request before the ready line.
	connectTimeout = 10 * time.Second
	// requestTimeout bounds one non-waiting step (a try, a release, a lease grant), so a server
	// that stopped answering turns into an error reply instead of a harness that hangs.
	requestTimeout = 10 * time.Second
	// throughputGrace is how long a throughput command may outlast its MS.
	throughputGrace = 10 * time.Second
	// maxMillis caps every millisecond argument (one week), as dlock's own harness does.
	maxMillis = 7 * 24 * 3600 * 1000
	// maxTasks caps throughput's TASKS.
	maxTasks = 1024
	// maxMessage caps the message of an error reply.
	maxMessage = 300
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.:-]{1,64}$`)

// lockPeer is one client library: the protocol's acquire/try and throughput mapped onto it.
type lockPeer interface {
	// acquire takes name for ttl (where the library has a lease). With wait it is the
	// library's own blocking acquire, which returns once the lock is ours or ctx is done;
	// without, one attempt that returns (nil, nil) when the lock is held elsewhere.
	acquire(ctx context.Context, name string, ttl time.Duration, wait bool) (heldLock, error)
	// worker makes the lock objects one throughput goroutine uses for name (its own).
	worker(ctx context.Context, name string, ttl time.Duration) (tpWorker, error)
	// close gives back whatever the peer keeps (idle sessions, connections).
	close()
}

// heldLock is a lock this process holds.
type heldLock interface {
	release(ctx context.Context) error
}

// tpWorker is what one throughput goroutine loops on.
type tpWorker interface {
	// lock is the library's blocking acquire; it returns ctx's error once ctx is done.
	lock(ctx context.Context) error
	unlock(ctx context.Context) error
	close()
}

// opener connects one peer and reports the library version for the ready line.
type opener func(ctx context.Context, url string) (lockPeer, string, error)

var peers = map[string]opener{
	"etcd-mutex":    func(ctx context.Context, url string) (lockPeer, string, error) { return openEtcd(ctx, url, false, "") },
	"etcd-election": func(ctx context.Context, url string) (lockPeer, string, error) { return openEtcd(ctx, url, true, "") },
	"etcd-rwmutex-read": func(ctx context.Context, url string) (lockPeer, string, error) {
		return openEtcd(ctx, url, false, "read")
	},
	"etcd-rwmutex-write": func(ctx context.Context, url string) (lockPeer, string, error) {
		return openEtcd(ctx, url, false, "write")
	},
	"redsync": openRedsync,
}

var stdoutMu sync.Mutex

// emit writes one reply line to stdout in one write (os.Stdout is unbuffered: nothing waits
// for a flush). A reader that went away is not worth dying for: SIGPIPE is ignored and the
// write error dropped; the end of stdin ends the process.
func emit(format string, args ...any) {
	line := fmt.Sprintf(format, args...) + "\n"
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	_, _ = io.WriteString(os.Stdout, line)
}

// oneLine flattens a message to one line of at most maxMessage bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		s = "failed"
	}
	if len(s) > maxMessage {
		s = s[:maxMessage-3] + "..."
	}
	return s
}

func errorReply(name string, t0 int64, err error) {
	emit("error %s %d %d %s", name, t0, monoMicros(), oneLine(err.Error()))
}

func unavailable(peer, reason string) {
	emit("unavailable %s %s", peer, oneLine(reason))
	os.Exit(1)
}

// moduleVersion is the version of a module linked into this binary, as the build recorded it
// (go.mod/go.sum), without the leading "v".
func moduleVersion(path string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, dep := range info.Deps {
		if dep.Path != path {
			continue
		}
		if dep.Replace != nil && dep.Replace.Version != "" {
			return strings.TrimPrefix(dep.Replace.Version, "v")
		}
		return strings.TrimPrefix(dep.Version, "v")
	}
	return "unknown"
}

func main() {
	log.SetOutput(os.Stderr)
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix(fmt.Sprintf("dlock-peer-go[%d] ", os.Getpid()))

	args := os.Args[1:]
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, usage)
		if len(args) == 1 {
			unavailable(args[0], "no URL given; "+usage)
		}
		os.Exit(64)
	}
	peerName, url := args[0], args[1]
	open, ok := peers[peerName]
	if !ok {
		unavailable(peerName, "unknown peer; "+usage)
	}

	// A write to a closed stdout must fail with EPIPE, not kill the process (Go's default
	// for fd 1): the locks it holds are released on the way out.
	signal.Ignore(syscall.SIGPIPE)

	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	p, version, err := open(ctx, url)
	cancel()
	if err != nil {
		unavailable(peerName, err.Error())
	}

	root, stop := context.WithCancel(context.Background())
	s := &server{peer: p, held: map[string]heldLock{}, root: root}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() {
		sig := <-signals
		log.Printf("%v: releasing what is held and exiting", sig)
		stop() // wakes a command waiting for a lock; it answers and gives the server back
		s.mu.Lock()
		s.shutdown()
		code := 1
		if n, ok := sig.(syscall.Signal); ok {
			code = 128 + int(n)
		}
		os.Exit(code)
	}()

	emit("ready %s %s %d", peerName, strings.ReplaceAll(version, " ", "_"), monoMicros())
	s.serve(os.Stdin)
}

// server answers the commands of one harness process, one at a time, in order.
type server struct {
	peer lockPeer
	// mu is held while a command runs, so a signal's shutdown waits for it to answer.
	mu   sync.Mutex
	held map[string]heldLock
	// root is cancelled by a signal: it ends any wait for a lock.
	root context.Context
	// throughputRuns numbers throughput commands (their lock names are new each time).
	throughputRuns int
}

func (s *server) serve(r io.Reader) {
	in := bufio.NewReaderSize(r, 64*1024)
	for {
		line, err := in.ReadString('\n')
		t0 := monoMicros()
		if line == "" && err != nil {
			if !errors.Is(err, io.EOF) {
				log.Printf("reading stdin: %v", err)
			}
			s.mu.Lock()
			s.quit(t0) // end of stdin means quit
		}
		s.mu.Lock()
		s.dispatch(strings.Fields(line), t0)
		s.mu.Unlock()
	}
}

// command is one parsed protocol line.
type command struct {
	verb  string
	name  string // "-" for commands without a name (and for an invalid one)
	ttl   time.Duration
	dur   time.Duration // hold's and throughput's MS
	tasks int
	same  bool
}

func parseMillis(word, what string, min int64) (time.Duration, error) {
	n, err := strconv.ParseInt(word, 10, 64)
	if err != nil || n < min || n > maxMillis {
		return 0, fmt.Errorf("%s %q is not a whole number of milliseconds in %d..=%d", what, word, min, int64(maxMillis))
	}
	return time.Duration(n) * time.Millisecond, nil
}

// parseCommand parses the words of one line. On an error the returned command still carries
// the verb and, where the line has a valid one, the name, for the error reply.
func parseCommand(words []string) (command, error) {
	c := command{name: "-"}
	if len(words) == 0 {
		return c, errors.New("empty line")
	}
	c.verb = words[0]
	named := c.verb == "acquire" || c.verb == "try" || c.verb == "release" || c.verb == "hold"
	if named && len(words) > 1 && nameRE.MatchString(words[1]) {
		c.name = words[1]
	}
	arity := func(n int, form string) error {
		if len(words) != n {
			return fmt.Errorf("usage: %s", form)
		}
		if named && c.name == "-" {
			return fmt.Errorf("bad name %q: names are [A-Za-z0-9_.:-]{1,64}", words[1])
		}
		return nil
	}
	var err error
	switch c.verb {
	case "acquire", "try":
		if err = arity(3, c.verb+" NAME TTL_MS"); err == nil {
			c.ttl, err = parseMillis(words[2], "TTL_MS", 1)
		}
	case "release":
		err = arity(2, "release NAME")
	case "hold":
		if err = arity(3, "hold NAME MS"); err == nil {
			c.dur, err = parseMillis(words[2], "MS", 0)
		}
	case "throughput":
		if err = arity(5, "throughput TASKS same|distinct MS TTL_MS"); err != nil {
			break
		}
		n, perr := strconv.Atoi(words[1])
		if perr != nil || n < 1 || n > maxTasks {
			err = fmt.Errorf("TASKS %q is not in 1..=%d", words[1], maxTasks)
			break
		}
		c.tasks = n
		switch words[2] {
		case "same":
			c.same = true
		case "distinct":
		default:
			err = fmt.Errorf("%q is neither same nor distinct", words[2])
		}
		if err == nil {
			c.dur, err = parseMillis(words[3], "MS", 1)
		}
		if err == nil {
			c.ttl, err = parseMillis(words[4], "TTL_MS", 1)
		}
	case "quit":
		err = arity(1, "quit")
	default:
		err = fmt.Errorf("unknown command %q", c.verb)
	}
	return c, err
}

func (s *server) dispatch(words []string, t0 int64) {
	c, err := parseCommand(words)
	if err != nil {
		errorReply(c.name, t0, err)
		return
	}
	switch c.verb {
	case "acquire", "try":
		s.acquire(c, t0)
	case "release":
		s.release(c, t0)
	case "hold":
		s.hold(c, t0)
	case "throughput":
		s.throughput(c, t0)
	case "quit":
		s.quit(t0)
	}
}

var errAlreadyHeld = errors.New("already held by this process")

func (s *server) acquire(c command, t0 int64) {
	if _, ok := s.held[c.name]; ok {
		errorReply(c.name, t0, errAlreadyHeld)
		return
	}
	h, err := s.peer.acquire(s.root, c.name, c.ttl, c.verb == "acquire")
	t1 := monoMicros()
	switch {
	case err != nil:
		errorReply(c.name, t0, err)
	case h == nil:
		emit("busy %s %d %d", c.name, t0, t1)
	default:
		s.held[c.name] = h
		emit("acquired %s %d %d", c.name, t0, t1)
	}
}

// releaseHeld gives a held lock back, on a context of its own: a release also runs after a
// signal cancelled the root context.
func releaseHeld(h heldLock) error {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	return h.release(ctx)
}

func (s *server) release(c command, t0 int64) {
	h, ok := s.held[c.name]
	if !ok {
		errorReply(c.name, t0, errors.New("not held"))
		return
	}
	delete(s.held, c.name)
	if err := releaseHeld(h); err != nil {
		errorReply(c.name, t0, err)
		return
	}
	emit("released %s %d %d", c.name, t0, monoMicros())
}

func (s *server) hold(c command, t0 int64) {
	if _, ok := s.held[c.name]; ok {
		errorReply(c.name, t0, errAlreadyHeld)
		return
	}
	h, err := s.peer.acquire(s.root, c.name, c.dur+time.Second, true)
	if err == nil && h == nil {
		err = errors.New("a waiting acquire came back without the lock")
	}
	if err != nil {
		errorReply(c.name, t0, err)
		return
	}
	emit("acquired %s %d %d", c.name, t0, monoMicros())
	timer := time.NewTimer(c.dur)
	select {
	case <-timer.C:
	case <-s.root.Done():
		timer.Stop()
	}
	r0 := monoMicros()
	if err := releaseHeld(h); err != nil {
		errorReply(c.name, r0, err)
		return
	}
	emit("released %s %d %d", c.name, r0, monoMicros())
}

// shutdown releases whatever is held and closes the peer; failures are only logged.
func (s *server) shutdown() {
	for name, h := range s.held {
		if err := releaseHeld(h); err != nil {
			log.Printf("releasing %s at exit: %v", name, err)
		}
		delete(s.held, name)
	}
	s.peer.close()
}

func (s *server) quit(t0 int64) {
	s.shutdown()
	emit("bye %d", t0)
	os.Exit(0)
}
