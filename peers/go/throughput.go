package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// throughput runs `throughput TASKS same|distinct MS TTL_MS`: TASKS goroutines, each with
// lock objects of its own (for etcd a session of its own), loop acquire + release for MS on
// one shared name or one name each; the reply counts the pairs completed inside MS. The whole
// command is capped at MS + throughputGrace from when it was read: by then every wait and
// every release is cancelled through its context and the count so far is the answer.
func (s *server) throughput(c command, t0 int64) {
	started := time.Now()
	capAt := started.Add(c.dur + throughputGrace)
	capCtx, cancelCap := context.WithDeadline(s.root, capAt)
	defer cancelCap()

	s.throughputRuns++
	base := fmt.Sprintf("tp.%d.%d", os.Getpid(), s.throughputRuns)
	names := make([]string, c.tasks)
	for i := range names {
		if c.same {
			names[i] = base + ".same"
		} else {
			names[i] = fmt.Sprintf("%s.%d", base, i)
		}
	}

	// The workers' lock objects (etcd: a lease each) are made before the clock starts.
	workers := make([]tpWorker, c.tasks)
	setupErrs := make([]error, c.tasks)
	var setup sync.WaitGroup
	for i := range workers {
		setup.Add(1)
		go func() {
			defer setup.Done()
			workers[i], setupErrs[i] = s.peer.worker(capCtx, names[i], c.ttl)
		}()
	}
	setup.Wait()
	if err := errors.Join(setupErrs...); err != nil {
		closeWorkers(workers)
		errorReply("-", t0, fmt.Errorf("setting up %d workers: %w", c.tasks, err))
		return
	}

	deadline := time.Now().Add(c.dur)
	if deadline.After(capAt) {
		deadline = capAt
	}
	runCtx, cancelRun := context.WithDeadline(capCtx, deadline)
	defer cancelRun()

	var ops atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	var failed int
	fail := func(i int, err error) {
		errMu.Lock()
		defer errMu.Unlock()
		failed++
		if firstErr == nil {
			firstErr = fmt.Errorf("worker %d: %w", i, err)
		}
	}

	var running sync.WaitGroup
	for i, w := range workers {
		running.Add(1)
		go func() {
			defer running.Done()
			for time.Now().Before(deadline) {
				if err := w.lock(runCtx); err != nil {
					if runCtx.Err() == nil {
						fail(i, err)
					}
					return
				}
				if err := w.unlock(capCtx); err != nil {
					fail(i, err)
					return
				}
				if !time.Now().After(deadline) {
					ops.Add(1)
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() {
		running.Wait()
		close(done)
	}()
	finished := true
	select {
	case <-done:
	case <-capCtx.Done():
		finished = false
	}
	n := ops.Load()
	t1 := monoMicros()

	errMu.Lock()
	err, nfailed := firstErr, failed
	errMu.Unlock()
	if !finished {
		log.Printf("throughput: workers still running %v after MS; answering with the pairs counted so far", throughputGrace)
	}
	if err != nil {
		log.Printf("throughput: %d of %d workers failed, first: %v", nfailed, c.tasks, err)
	}
	if err != nil && n == 0 {
		errorReply("-", t0, fmt.Errorf("%d of %d workers failed, first: %w", nfailed, c.tasks, err))
	} else {
		emit("throughput %d %d %d", n, t0, t1)
	}
	cancelRun()
	cancelCap()
	if finished {
		closeWorkers(workers)
	} else {
		// Cancelled above; they end on their own and close what they have.
		go func() {
			<-done
			closeWorkers(workers)
		}()
	}
}

// closeWorkers closes every worker (etcd: revokes its lease) in parallel.
func closeWorkers(workers []tpWorker) {
	var wg sync.WaitGroup
	for _, w := range workers {
		if w == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.close()
		}()
	}
	wg.Wait()
}
