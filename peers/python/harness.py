#!/usr/bin/env python3
"""dlock peer harness for Python lock libraries.

    python harness.py PEER URL

PEER is one of psycopg-advisory, redis-py, python-redis-lock, pottery, kazoo. The harness
connects, prints `ready PEER VERSION T` (or `unavailable PEER REASON` and exits 1), then
answers the line protocol of peers/README.md on stdin/stdout, one command at a time. Every
reply is flushed at once; logging goes to stderr only (level from DLOCK_PEER_LOG, default
WARNING). Each peer keeps its library's defaults except the lease length, and the
python-redis-lock client's socket timeout (see README.md here).
"""

import importlib.metadata
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# Commands whose first argument is a lock name (used to name the lock in an error reply).
NAMED_COMMANDS = ("acquire", "try", "release", "hold")
# How long `throughput` may overrun its MS before it stops waiting for its workers.
THROUGHPUT_GRACE_S = 10.0
# Default ZooKeeper session timeout for the kazoo peer (DLOCK_PEER_SESSION_MS overrides it).
DEFAULT_SESSION_MS = 2000

log = logging.getLogger("dlock-peer")


def now_us() -> int:
    """CLOCK_MONOTONIC in whole microseconds: the clock every process on the machine shares."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


MAX_MESSAGE = 300


def describe(exc: BaseException) -> str:
    """An exception as one line of at most MAX_MESSAGE characters, for a reply."""
    text = one_line(exc)
    if not isinstance(exc, CommandError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = text or "failed"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class CommandError(Exception):
    """A command that cannot be carried out; its text is the error reply's message."""


@dataclass
class Handle:
    """One lock object of a peer, for one name (acquired or about to be)."""

    name: str
    obj: Any
    # psycopg-advisory: the connection (session) that takes the lock.
    conn: Any = None
    # python-redis-lock: its whole-second expiry (caps the `timeout` acquire accepts).
    expire_s: int = 0


def ceil_seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


def split_redis_url(url: str) -> list:
    """`redis://h1:p1,h2:p2/db` -> one URL per host (`redis://h1:p1/db`, ...)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// URL: {url}")
    cut = len(rest)
    for mark in "/?":
        at = rest.find(mark)
        if at != -1:
            cut = min(cut, at)
    hosts, tail = rest[:cut], rest[cut:]
    auth = ""
    if "@" in hosts:
        userinfo, _, hosts = hosts.rpartition("@")
        auth = userinfo + "@"
    urls = [f"{scheme}://{auth}{h}{tail}" for h in hosts.split(",") if h]
    if not urls:
        raise ValueError(f"no host in {url}")
    return urls


class Peer:
    """One client library. Subclasses map the protocol onto the library's own calls."""

    peer = ""  # the protocol's PEER name
    dist = ""  # the distribution whose version the ready line reports

    def __init__(self, url: str):
        self.url = url

    def version(self) -> str:
        return importlib.metadata.version(self.dist).replace(" ", "")

    def connect(self) -> None:
        raise NotImplementedError

    def lock(self, name: str, ttl_ms: int) -> Handle:
        raise NotImplementedError

    def acquire(self, h: Handle) -> None:
        """The library's own blocking acquire: returns once the lock is ours."""
        raise NotImplementedError

    def try_acquire(self, h: Handle) -> bool:
        """One attempt, no waiting."""
        raise NotImplementedError

    def acquire_until(self, h: Handle, deadline: float) -> bool:
        """Blocking acquire that gives up around `deadline` (time.monotonic()), where the
        library has a timeout; used by `throughput` to stop its workers."""
        raise NotImplementedError

    def release(self, h: Handle) -> None:
        raise NotImplementedError

    def worker(self) -> "Peer":
        """What one throughput worker uses: the shared client (self) unless the library's
        usual way is one connection per thread."""
        return self

    def interrupt(self) -> None:
        """Wakes a worker stuck in a blocking call (throughput's overrun cap)."""

    def close(self) -> None:
        pass


class PsycopgAdvisory(Peer):
    """PostgreSQL session-level advisory locks through psycopg 3, one autocommit connection."""

    peer = "psycopg-advisory"
    dist = "psycopg"

    LOCK = "SELECT pg_advisory_lock(hashtext(%s))"
    TRY = "SELECT pg_try_advisory_lock(hashtext(%s))"
    UNLOCK = "SELECT pg_advisory_unlock(hashtext(%s))"

    def connect(self) -> None:
        import psycopg

        self.psycopg = psycopg
        self.conn = psycopg.connect(self.url, autocommit=True)
        log.info(
            "psycopg %s, implementation %s, libpq %s",
            psycopg.__version__,
            psycopg.pq.__impl__,
            psycopg.pq.version(),
        )

    def _live_conn(self):
        # psycopg does not reconnect by itself; a session that died took its locks with it
        # (the server released them), so a new connection loses nothing more.
        if self.conn.closed or self.conn.broken:
            log.warning("psycopg: the connection was lost; reconnecting")
            self.conn = self.psycopg.connect(self.url, autocommit=True)
        return self.conn

    def lock(self, name: str, ttl_ms: int) -> Handle:
        return Handle(name=name, obj=None, conn=self._live_conn())

    @staticmethod
    def _scalar(h: Handle, sql: str):
        return h.conn.execute(sql, (h.name,)).fetchone()[0]

    def acquire(self, h: Handle) -> None:
        self._scalar(h, self.LOCK)

    def try_acquire(self, h: Handle) -> bool:
        return bool(self._scalar(h, self.TRY))

    def acquire_until(self, h: Handle, deadline: float) -> bool:
        # pg_advisory_lock has no timeout argument; an overrun is cut by interrupt().
        self._scalar(h, self.LOCK)
        return True

    def release(self, h: Handle) -> None:
        if h.conn.closed or h.conn.broken:
            raise CommandError("the connection that took it was lost (the server freed the lock)")
        if not self._scalar(h, self.UNLOCK):
            raise CommandError("pg_advisory_unlock returned false: this session does not hold it")

    def worker(self) -> Peer:
        w = PsycopgAdvisory(self.url)
        w.connect()
        return w

    def interrupt(self) -> None:
        self.conn.cancel_safe()

    def close(self) -> None:
        self.conn.close()


class RedisPy(Peer):
    """redis-py's own lock: `Redis.lock(name, timeout=ttl)`, polling every 0.1 s (its default)."""

    peer = "redis-py"
    dist = "redis"
    # Options for the redis.Redis client beyond the URL (none: redis-py's defaults).
    client_options: dict = {}

    def connect(self) -> None:
        import redis

        urls = split_redis_url(self.url)
        if len(urls) != 1:
            raise ValueError(f"{self.peer} takes one server, got {len(urls)}")
        self.client = redis.Redis.from_url(urls[0], **self.client_options)
        self.client.ping()

    def lock(self, name: str, ttl_ms: int) -> Handle:
        return Handle(name=name, obj=self.client.lock(name, timeout=ttl_ms / 1000))

    def acquire(self, h: Handle) -> None:
        if not h.obj.acquire():
            raise CommandError("redis-py: blocking acquire returned False")

    def try_acquire(self, h: Handle) -> bool:
        return bool(h.obj.acquire(blocking=False))

    def acquire_until(self, h: Handle, deadline: float) -> bool:
        left = deadline - time.monotonic()
        return left > 0 and bool(h.obj.acquire(blocking_timeout=left))

    def release(self, h: Handle) -> None:
        h.obj.release()

    def close(self) -> None:
        self.client.close()


class PythonRedisLock(RedisPy):
    """python-redis-lock: `redis_lock.Lock(conn, name, expire=whole seconds)`, waiting on BLPOP."""

    peer = "python-redis-lock"
    dist = "python-redis-lock"
    # redis-py 8.0 made 5 s the default socket_timeout (it was None before). A waiter here
    # blocks in BLPOP for up to `expire` seconds, so with the new default every wait longer
    # than 5 s fails with TimeoutError. The client gets redis-py's pre-8 setting, the one
    # python-redis-lock 4.0.1 was written against; the lock's own defaults are untouched.
    client_options = {"socket_timeout": None}

    def connect(self) -> None:
        super().connect()
        import redis_lock

        self.redis_lock = redis_lock
        # A busy non-blocking acquire logs a warning each time; keep stderr for real trouble.
        logging.getLogger("redis_lock").setLevel(logging.ERROR)

    def lock(self, name: str, ttl_ms: int) -> Handle:
        expire = ceil_seconds(ttl_ms)  # the library takes whole seconds (SET ... EX)
        return Handle(name=name, obj=self.redis_lock.Lock(self.client, name, expire=expire), expire_s=expire)

    def acquire(self, h: Handle) -> None:
        if not h.obj.acquire():
            raise CommandError("python-redis-lock: blocking acquire returned False")

    def try_acquire(self, h: Handle) -> bool:
        return bool(h.obj.acquire(blocking=False))

    def acquire_until(self, h: Handle, deadline: float) -> bool:
        # Its timeout is whole seconds and may not exceed expire: wait in slices.
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if h.obj.acquire(blocking=True, timeout=min(h.expire_s, math.ceil(left))):
                return True


class Pottery(Peer):
    """pottery's Redlock over one or more masters (`redis://h1:p1,h2:p2,h3:p3`)."""

    peer = "pottery"
    dist = "pottery"

    def connect(self) -> None:
        import pottery
        import redis

        self.pottery = pottery
        self.masters = [redis.Redis.from_url(u) for u in split_redis_url(self.url)]
        down = []
        for m, u in zip(self.masters, split_redis_url(self.url)):
            try:
                m.ping()
            except Exception as e:  # noqa: BLE001 - any failure means this master is down
                down.append(f"{u} ({describe(e)})")
        if len(self.masters) - len(down) <= len(self.masters) // 2:
            raise ConnectionError("no quorum of masters reachable: " + "; ".join(down))
        for d in down:
            log.warning("pottery: master not reachable at start: %s", d)

    def lock(self, name: str, ttl_ms: int) -> Handle:
        # pottery 3.x takes auto_release_time in seconds (a float).
        obj = self.pottery.Redlock(key=name, masters=set(self.masters), auto_release_time=ttl_ms / 1000)
        return Handle(name=name, obj=obj)

    def acquire(self, h: Handle) -> None:
        if not h.obj.acquire():
            raise CommandError("pottery: blocking acquire returned False")

    def try_acquire(self, h: Handle) -> bool:
        return bool(h.obj.acquire(blocking=False))

    def acquire_until(self, h: Handle, deadline: float) -> bool:
        left = deadline - time.monotonic()
        return left > 0 and bool(h.obj.acquire(timeout=left))

    def release(self, h: Handle) -> None:
        from pottery import ReleaseUnlockedLock

        try:
            h.obj.release()
        except ReleaseUnlockedLock:
            # Its text lists every master client; say what it means instead.
            raise CommandError("ReleaseUnlockedLock: no majority of masters still had it (expired or lost)") from None

    def close(self) -> None:
        for m in self.masters:
            m.close()


class Kazoo(Peer):
    """kazoo's Lock recipe (ephemeral sequential znodes, a watch on the predecessor)."""

    peer = "kazoo"
    dist = "kazoo"

    def connect(self) -> None:
        from kazoo.client import KazooClient

        raw = os.environ.get("DLOCK_PEER_SESSION_MS", "").strip()
        session_ms = int(raw) if raw else DEFAULT_SESSION_MS
        if session_ms <= 0:
            raise ValueError(f"DLOCK_PEER_SESSION_MS must be positive, got {raw}")
        hosts = self.url[len("zk://"):] if self.url.startswith("zk://") else self.url
        self.client = KazooClient(hosts=hosts, timeout=session_ms / 1000)
        try:
            self.client.start(timeout=10)
        except Exception:
            self.client.stop()
            raise
        log.info("kazoo: connected to %s, session timeout asked %d ms", hosts, session_ms)

    def lock(self, name: str, ttl_ms: int) -> Handle:
        # No per-lock lease: the lock lives as long as the session (its ephemeral znode).
        return Handle(name=name, obj=self.client.Lock("/dlock-peers/" + name))

    def acquire(self, h: Handle) -> None:
        if not h.obj.acquire():
            raise CommandError("kazoo: blocking acquire returned False")

    def try_acquire(self, h: Handle) -> bool:
        return bool(h.obj.acquire(blocking=False))

    def acquire_until(self, h: Handle, deadline: float) -> bool:
        from kazoo.exceptions import LockTimeout

        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            return bool(h.obj.acquire(timeout=left))
        except LockTimeout:
            return False

    def release(self, h: Handle) -> None:
        if not h.obj.release():
            raise CommandError("kazoo: Lock.release returned False (not acquired)")

    def close(self) -> None:
        self.client.stop()
        self.client.close()


PEERS = {cls.peer: cls for cls in (PsycopgAdvisory, RedisPy, PythonRedisLock, Pottery, Kazoo)}


def parse_name(word: str) -> str:
    if not NAME_RE.fullmatch(word):
        raise CommandError(f"bad name {word!r}: names are [A-Za-z0-9_.:-]{{1,64}}")
    return word


def parse_int(word: str, what: str, minimum: int) -> int:
    try:
        value = int(word, 10)
    except ValueError:
        raise CommandError(f"{what} must be an integer, got {word!r}") from None
    if value < minimum:
        raise CommandError(f"{what} must be at least {minimum}, got {value}")
    return value


def arity(args: list, n: int, usage: str) -> None:
    if len(args) != n:
        raise CommandError(f"usage: {usage}")


class Session:
    """Serves the commands of one harness process, one at a time, in order."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.held: dict = {}  # name -> Handle, in acquisition order
        self.throughput_runs = 0

    def serve(self) -> None:
        stdin = sys.stdin.buffer
        while True:
            raw = stdin.readline()
            t0 = now_us()
            if not raw:  # end of stdin means quit
                self.quit(t0)
            words = raw.decode("utf-8", "replace").split()
            self.dispatch(words, t0)

    def dispatch(self, words: list, t0: int) -> None:
        cmd = words[0] if words else ""
        name = "-"
        if cmd in NAMED_COMMANDS and len(words) > 1 and NAME_RE.fullmatch(words[1]):
            name = words[1]
        handler = {
            "acquire": self.cmd_acquire,
            "try": self.cmd_try,
            "release": self.cmd_release,
            "hold": self.cmd_hold,
            "throughput": self.cmd_throughput,
            "quit": self.cmd_quit,
        }.get(cmd)
        try:
            if handler is None:
                raise CommandError(f"unknown command {cmd!r}" if cmd else "empty line")
            handler(words[1:], t0)
        except Exception as e:  # noqa: BLE001 - every failure becomes an error reply
            if not isinstance(e, CommandError):
                log.debug("%s failed", cmd, exc_info=True)
            emit(f"error {name} {t0} {now_us()} {describe(e)}")

    def _fresh(self, name: str) -> None:
        if name in self.held:
            raise CommandError("already held by this process")

    def cmd_acquire(self, args: list, t0: int) -> None:
        arity(args, 2, "acquire NAME TTL_MS")
        name = parse_name(args[0])
        ttl_ms = parse_int(args[1], "TTL_MS", 1)
        self._fresh(name)
        h = self.peer.lock(name, ttl_ms)
        self.peer.acquire(h)
        self.held[name] = h
        emit(f"acquired {name} {t0} {now_us()}")

    def cmd_try(self, args: list, t0: int) -> None:
        arity(args, 2, "try NAME TTL_MS")
        name = parse_name(args[0])
        ttl_ms = parse_int(args[1], "TTL_MS", 1)
        self._fresh(name)
        h = self.peer.lock(name, ttl_ms)
        if self.peer.try_acquire(h):
            self.held[name] = h
            emit(f"acquired {name} {t0} {now_us()}")
        else:
            emit(f"busy {name} {t0} {now_us()}")

    def cmd_release(self, args: list, t0: int) -> None:
        arity(args, 1, "release NAME")
        name = parse_name(args[0])
        h = self.held.pop(name, None)
        if h is None:
            raise CommandError("not held")
        self.peer.release(h)
        emit(f"released {name} {t0} {now_us()}")

    def cmd_hold(self, args: list, t0: int) -> None:
        arity(args, 2, "hold NAME MS")
        name = parse_name(args[0])
        ms = parse_int(args[1], "MS", 0)
        self._fresh(name)
        h = self.peer.lock(name, ms + 1000)
        self.peer.acquire(h)
        self.held[name] = h
        t1 = now_us()
        emit(f"acquired {name} {t0} {t1}")
        until = t1 + ms * 1000
        while True:
            left = until - now_us()
            if left <= 0:
                break
            time.sleep(left / 1e6)
        r0 = now_us()
        self.held.pop(name, None)
        try:
            self.peer.release(h)
        except Exception as e:  # noqa: BLE001
            emit(f"error {name} {r0} {now_us()} {describe(e)}")
            return
        emit(f"released {name} {r0} {now_us()}")

    def cmd_throughput(self, args: list, t0: int) -> None:
        arity(args, 4, "throughput TASKS same|distinct MS TTL_MS")
        tasks = parse_int(args[0], "TASKS", 1)
        mode = args[1]
        if mode not in ("same", "distinct"):
            raise CommandError(f"mode must be same or distinct, got {mode!r}")
        ms = parse_int(args[2], "MS", 1)
        ttl_ms = parse_int(args[3], "TTL_MS", 1)
        self.throughput_runs += 1
        base = f"tp.{os.getpid()}.{self.throughput_runs}"
        names = [f"{base}.same"] * tasks if mode == "same" else [f"{base}.{i}" for i in range(tasks)]

        workers: list = []
        stuck: set = set()
        try:
            for _ in range(tasks):
                workers.append(self.peer.worker())
            handles = [w.lock(n, ttl_ms) for w, n in zip(workers, names)]
            counts = [0] * tasks
            errors: dict = {}  # worker -> its exception
            gate = threading.Barrier(tasks + 1)
            timing = {}

            def run(i: int) -> None:
                w, h = workers[i], handles[i]
                gate.wait()
                deadline = timing["deadline"]
                try:
                    while time.monotonic() < deadline:
                        if not w.acquire_until(h, deadline):
                            continue
                        w.release(h)
                        if time.monotonic() <= deadline:
                            counts[i] += 1
                except Exception as e:  # noqa: BLE001
                    log.warning("throughput worker %d: %s", i, describe(e))
                    errors[i] = e

            threads = [threading.Thread(target=run, args=(i,), daemon=True, name=f"tp-{i}") for i in range(tasks)]
            for t in threads:
                t.start()
            timing["deadline"] = time.monotonic() + ms / 1000
            gate.wait()
            cap = timing["deadline"] + THROUGHPUT_GRACE_S
            for t in threads:
                t.join(max(0.0, cap - time.monotonic()))
            late = [i for i, t in enumerate(threads) if t.is_alive()]
            for i in late:
                log.warning("throughput worker %d still running %.0f s after MS; interrupting", i, THROUGHPUT_GRACE_S)
                try:
                    workers[i].interrupt()
                except Exception as e:  # noqa: BLE001
                    log.warning("interrupting worker %d: %s", i, describe(e))
            for i in late:
                threads[i].join(2.0)
                if threads[i].is_alive():
                    stuck.add(i)
            if stuck:
                log.warning("throughput: %d worker(s) never stopped; their pairs after MS are not counted", len(stuck))
            # A worker cut off by interrupt() fails by design: its pairs after MS never counted.
            failed = [e for i, e in sorted(errors.items()) if i not in late]
            if failed:
                raise CommandError(f"{len(failed)} of {tasks} workers failed, first: {describe(failed[0])}")
            emit(f"throughput {sum(counts)} {t0} {now_us()}")
        finally:
            for i, w in enumerate(workers):
                if w is not self.peer and i not in stuck:
                    try:
                        w.close()
                    except Exception as e:  # noqa: BLE001
                        log.warning("closing worker %d: %s", i, describe(e))

    def cmd_quit(self, args: list, t0: int) -> None:
        arity(args, 0, "quit")
        self.quit(t0)

    def shutdown(self) -> None:
        """Releases whatever is held and disconnects; errors are only logged."""
        for name, h in list(self.held.items()):
            try:
                self.peer.release(h)
            except Exception as e:  # noqa: BLE001
                log.warning("releasing %s at exit: %s", name, describe(e))
        self.held.clear()
        try:
            self.peer.close()
        except Exception as e:  # noqa: BLE001
            log.warning("closing: %s", describe(e))

    def quit(self, t0: int) -> None:
        self.shutdown()
        try:
            emit(f"bye {t0}")
        except (BrokenPipeError, ValueError):
            pass
        # os._exit: library threads (executors, pools) must not keep the process alive.
        os._exit(0)


def unavailable(peer: str, reason: str) -> None:
    emit(f"unavailable {peer} {one_line(reason) or 'unknown reason'}")
    os._exit(1)


def main(argv: list) -> None:
    level = logging.getLevelName(os.environ.get("DLOCK_PEER_LOG", "WARNING").strip().upper())
    logging.basicConfig(
        stream=sys.stderr,
        level=level if isinstance(level, int) else logging.WARNING,
        format="%(asctime)s harness.py[%(process)d] %(name)s %(levelname)s %(message)s",
    )
    if len(argv) != 3:
        print(f"usage: {os.path.basename(argv[0])} PEER URL   (PEER: {', '.join(PEERS)})", file=sys.stderr)
        if len(argv) == 2:
            unavailable(argv[1], "usage: harness.py PEER URL (no URL given)")
        sys.exit(2)
    peer_name, url = argv[1], argv[2]
    cls = PEERS.get(peer_name)
    if cls is None:
        unavailable(peer_name, f"unknown peer (this harness has: {', '.join(PEERS)})")
    peer = cls(url)
    try:
        peer.connect()
        version = peer.version()
    except Exception as e:  # noqa: BLE001 - import or connect failure
        log.debug("connect failed", exc_info=True)
        unavailable(peer_name, describe(e))

    session = Session(peer)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    code = 1
    try:
        emit(f"ready {peer_name} {version} {now_us()}")
        session.serve()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        log.warning("stdout closed; releasing and exiting")
    session.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
