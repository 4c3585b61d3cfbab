"""A TCP relay on loopback that holds every byte for ``d`` ms each way: a network round trip.

This kernel has no ``sch_netem``, so a chosen round-trip time has to be added in user space:
:class:`DelayRelay` sits between a client and its server, and each direction is one thread
that stamps every chunk it receives with ``time.monotonic_ns()`` and forwards it once it is
``d`` ms old (added RTT = 2 d), optionally through a token bucket (a bandwidth cap).  Byte order
is kept (one FIFO per direction) and chunks that are due together go out in one ``send``.

The clock is fine-grained on purpose: event-loop timers (asyncio, epoll) round timeouts up to
whole milliseconds.  A pump thread sleeps in ``select()`` with a microsecond timeout (timer
slack lowered to 1 µs with ``prctl``), aiming early by how late its wake-ups have been (a
running estimate, ~50-100 µs on these VMs, capped by ``spin_us``) and polls the rest.  The
bytes wait in a pipe (``splice``), so they are never copied through Python.  TCP_NODELAY is
set on every socket: with Nagle plus delayed ACKs a small request waits ~40 ms.

Measured cost on a 2-core VM: one extra process hop adds ~0.05-0.1 ms to each round trip even
at 0 delay, and ~1.5-2 CPU s/GB (5-9 with a delay, most of it polling); see the tests.

:class:`RelayProcess` runs the same relay in a child process (``python relay.py``), so the
caller's own threads and GIL never delay a byte; it exits when its stdin closes, i.e. also
when the caller dies.  Stdlib only.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

from lmdbio.study.service import Service

__all__ = ["DelayRelay", "RelayProcess", "RelayStats"]

Address = tuple[str, int]
PIPE_BYTES = 4 << 20            # held bytes per direction before we stop reading (backpressure)
SPIN_MARGIN_NS = 10_000         # poll this long before due, beyond the measured oversleep
SPIN_US = 200.0                 # default: never wake (and poll) earlier than this before due
POLL_S = 0.2                    # longest sleep: how soon a thread notices stop()
MIN_BURST = 64 << 10            # token bucket depth floor, bytes


@dataclass(frozen=True)
class RelayStats:
    """Counters of one relay: bytes each way, connections, CPU of its threads (complete after
    close; ``cpu_s`` counts threads that have finished)."""

    one_way_ms: float
    bandwidth_mbps: Optional[float]
    connections: int
    bytes_up: int                # client -> upstream
    bytes_down: int              # upstream -> client
    cpu_s: float                 # time.thread_time() summed over the relay's threads

    @property
    def cpu_s_per_gb(self) -> float:
        total = self.bytes_up + self.bytes_down
        return self.cpu_s / (total / 1e9) if total else 0.0


def _grow_pipe(fd: int) -> int:
    """Make the pipe hold ``PIPE_BYTES`` (at most ``/proc/sys/fs/pipe-max-size`` without
    CAP_SYS_RESOURCE, which even root may lack in a container); its capacity in bytes.

    The pipe holds what is in flight one way, so its size caps the link at size / one-way
    delay: the 64 KiB default would make 1 ms each way a 64 MB/s link whatever was configured.
    """
    try:
        with open("/proc/sys/fs/pipe-max-size") as handle:
            allowed = int(handle.read())
    except (OSError, ValueError):
        allowed = 1 << 20  # the kernel's default limit
    for size in (PIPE_BYTES, min(PIPE_BYTES, allowed)):
        try:
            return fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            continue
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _fine_timer_slack() -> None:
    """Let the kernel wake this thread within ~1 µs of a timeout (default slack: 50 µs)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, ns
    except (OSError, AttributeError):
        pass


class _Connection:
    """One accepted client and its upstream socket; the last pump to finish closes both."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self.bytes = [0, 0]  # [up, down]
        self._alive = 2
        self._lock = threading.Lock()

    def abort(self) -> None:
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump_done(self) -> None:
        with self._lock:
            self._alive -= 1
            last = self._alive == 0
        if last:
            for sock in self.socks:
                sock.close()


class DelayRelay(Service):
    """``with DelayRelay(upstream=("127.0.0.1", 22), one_way_ms=0.5) as r: connect(r.port)``.

    Every connection accepted on ``listen`` is connected to ``upstream``; each direction holds
    every byte ``one_way_ms`` ms after its receipt and, with ``bandwidth_mbps`` (megabits/s),
    goes through a token bucket per connection and direction.  Exit stops the threads and
    closes every socket.  ``spin_us`` bounds how long before a chunk is due a thread stops
    sleeping and polls: more is closer to the configured delay (wake-ups here are ~0.05-0.1 ms
    late) and costs more CPU; 0 never polls.
    """

    def __init__(self, listen: Address = ("127.0.0.1", 0), upstream: Address = ("127.0.0.1", 0),
                 one_way_ms: float = 0.0, bandwidth_mbps: Optional[float] = None,
                 spin_us: float = SPIN_US) -> None:
        if one_way_ms < 0 or (bandwidth_mbps is not None and bandwidth_mbps <= 0):
            raise ValueError("one_way_ms must be >= 0 and bandwidth_mbps > 0")
        self.listen, self.upstream = listen, upstream
        self.one_way_ms, self.bandwidth_mbps = float(one_way_ms), bandwidth_mbps
        self.port = 0
        self.connect_failures = 0
        self._delay_ns = round(one_way_ms * 1e6)
        self._max_early_ns = round(spin_us * 1e3)
        self._rate = None if bandwidth_mbps is None else bandwidth_mbps * 1e6 / 8  # bytes/s
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._cpu_s = 0.0
        self._listener: Optional[socket.socket] = None

    # -- lifecycle (Service: start on enter, close on exit or a failed start) ----------------
    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(self.listen)
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._spawn(self._accept_loop, "accept")

    def close(self) -> None:
        """Stop accepting, cut every connection, join every thread.  Idempotent."""
        self._stopping.set()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            conn.abort()
        for thread in threads:
            thread.join(5.0)
        if self._listener is not None:
            self._listener.close()
        for conn in conns:
            for sock in conn.socks:
                sock.close()

    def threads(self) -> list[threading.Thread]:
        with self._lock:
            return [t for t in self._threads if t.is_alive()]

    def stats(self) -> RelayStats:
        with self._lock:
            up = sum(c.bytes[0] for c in self._conns)
            down = sum(c.bytes[1] for c in self._conns)
            return RelayStats(self.one_way_ms, self.bandwidth_mbps, len(self._conns),
                              up, down, self._cpu_s)

    # -- threads -----------------------------------------------------------------------------
    def _spawn(self, target, name: str, *args) -> None:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                target(*args)
            finally:
                with self._lock:
                    self._cpu_s += time.thread_time()
        thread = threading.Thread(target=run, name=f"DelayRelay-{self.port}-{name}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            if not select.select([self._listener], [], [], POLL_S)[0]:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5.0)
                upstream.settimeout(None)
            except OSError:
                client.close()
                self.connect_failures += 1
                continue
            for sock in (client, upstream):
                _nodelay(sock)
            conn = _Connection(client, upstream)
            with self._lock:
                if self._stopping.is_set():
                    conn.abort()
                    client.close()
                    upstream.close()
                    return
                self._conns.append(conn)
            n = len(self._conns)
            self._spawn(self._pump, f"{n}-up", conn, 0)
            self._spawn(self._pump, f"{n}-down", conn, 1)

    def _pump(self, conn: _Connection, direction: int) -> None:
        """Forward src -> dst, each chunk held until ``receipt + delay`` (and tokens allow).

        The bytes wait in a pipe (``splice``: no copy through user space, so the relay costs
        little CPU); the deque holds only ``(due_ns, nbytes)`` per received chunk, in order.
        """
        _fine_timer_slack()
        src, dst = conn.socks if direction == 0 else conn.socks[::-1]
        sfd, dfd = src.fileno(), dst.fileno()
        delay, rate = self._delay_ns, self._rate
        burst = max(MIN_BURST, int(rate * 1e-3)) if rate else 0  # 1 ms of line rate
        tokens, refilled = float(burst), time.monotonic_ns()
        queue: collections.deque[list[int]] = collections.deque()  # [due_ns, nbytes]
        queued, eof, clean, full = 0, False, False, False
        oversleep = 50_000  # running estimate of how late select() wakes us, ns
        mono, stopping, splice = time.monotonic_ns, self._stopping, os.splice
        max_early = self._max_early_ns
        pipe_r, pipe_w = os.pipe2(os.O_CLOEXEC)
        try:
            cap = _grow_pipe(pipe_w)
            while not stopping.is_set():
                if not queue:
                    if eof:
                        dst.shutdown(socket.SHUT_WR)
                        clean = True
                        return
                    n = splice(sfd, pipe_w, cap)  # nothing held: block until data arrives
                    if not n:
                        eof = True
                        continue
                    queue.append([mono() + delay, n])
                    queued += n
                    if delay:
                        continue
                now = mono()
                wait = queue[0][0] - now
                if rate:
                    tokens = min(float(burst), tokens + (now - refilled) * rate / 1e9)
                    refilled = now
                    want = min(queue[0][1], burst)
                    if tokens < want:
                        wait = max(wait, int((want - tokens) / rate * 1e9) + 1)
                if wait <= 0:  # send every due chunk at once, as far as the bucket allows
                    limit = int(tokens) if rate else queued
                    n = 0
                    while queue and queue[0][0] <= now and n < limit:
                        take = min(queue[0][1], limit - n)
                        n += take
                        if take == queue[0][1]:
                            queue.popleft()
                        else:
                            queue[0][1] -= take
                    left = n
                    while left:
                        left -= splice(pipe_r, dfd, left, flags=os.SPLICE_F_MOVE)
                    queued -= n
                    tokens -= n
                    full = False
                    conn.bytes[direction] += n
                    continue
                # Sleep until (due - expected oversleep - margin), then poll: late wake-ups on
                # an idle VM cost ~50-100 us, so we learn how late and aim that much early.
                readable = [src] if not (eof or full) and queued < cap else []
                sleep = min(wait - min(oversleep + SPIN_MARGIN_NS, max_early), POLL_S * 10**9)
                ready = select.select(readable, [], [], max(0, sleep) / 1e9)[0]
                if sleep > 0 and not ready:
                    oversleep += (mono() - now - sleep - oversleep) // 8
                if ready:
                    try:
                        n = splice(sfd, pipe_w, cap - queued, flags=os.SPLICE_F_NONBLOCK)
                    except BlockingIOError:  # the pipe ran out of slots: wait for a send
                        full = True
                        continue
                    if n:
                        queue.append([mono() + delay, n])
                        queued += n
                    else:
                        eof = True
        except OSError:
            pass
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
            if not clean:
                conn.abort()
            conn.pump_done()


class RelayProcess(Service):
    """:class:`DelayRelay` in a child process; ``.port`` once entered, ``.stats`` after close.

    The child ignores SIGINT (the caller tears down in order) and exits when its stdin closes,
    so it cannot outlive the caller.
    """

    def __init__(self, upstream: Address, one_way_ms: float = 0.0,
                 bandwidth_mbps: Optional[float] = None, spin_us: float = SPIN_US) -> None:
        self.upstream, self.one_way_ms, self.bandwidth_mbps = upstream, one_way_ms, bandwidth_mbps
        self.spin_us = spin_us
        self.port = 0
        self.pid: Optional[int] = None
        self.stats: Optional[RelayStats] = None
        self._proc: Optional[subprocess.Popen] = None

    def start(self, timeout_s: float = 15.0) -> None:
        argv = [sys.executable, os.path.abspath(__file__), "--upstream",
                f"{self.upstream[0]}:{self.upstream[1]}", "--one-way-ms", repr(self.one_way_ms),
                "--spin-us", repr(self.spin_us)]
        if self.bandwidth_mbps is not None:
            argv += ["--bandwidth-mbps", repr(self.bandwidth_mbps)]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, start_new_session=True)
        self.pid = self._proc.pid
        assert self._proc.stdout is not None
        if not select.select([self._proc.stdout], [], [], timeout_s)[0]:
            raise RuntimeError("relay process did not start")
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else b""  # type: ignore[union-attr]
            raise RuntimeError("relay process failed: " + err.decode(errors="replace")[-500:])
        self.port = json.loads(line)["port"]

    def close(self) -> None:
        """Close the child's stdin (it stops and reports), wait, kill as a backstop."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            out, _ = proc.communicate(timeout=10.0)  # closes stdin
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            self.stats = RelayStats(**json.loads(line))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    parser.add_argument("--one-way-ms", type=float, default=0.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=None)
    parser.add_argument("--spin-us", type=float, default=SPIN_US)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, _, port = args.upstream.rpartition(":")
    lhost, _, lport = args.listen.rpartition(":")
    relay = DelayRelay((lhost, int(lport)), (host, int(port)), args.one_way_ms,
                       args.bandwidth_mbps, args.spin_us)
    with relay:
        print(json.dumps({"port": relay.port}), flush=True)
        try:
            sys.stdin.buffer.read()  # until the caller closes our stdin (or dies)
        except SystemExit:
            pass
    print(json.dumps(asdict(relay.stats())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
