"""The relay core's loop: one thread that blocks on sockets and pipes together and moves bytes.

A machine's hot path (evals and guild requests down to the cluster pipes, answers back
up) used to run as asyncio callbacks: every eval woke the event loop several times, and
each wake-up ran a lot of cold interpreter code. Here it runs in a tight synchronous loop
on its own thread, which sleeps in one ``poll`` over every descriptor it serves (a
ZeroMQ socket's through its ``ZMQ_FD``) and wakes once per burst:

- **readers**: a descriptor and what to call when it is readable (a pipe's end, the
  wake-up socket). A ZeroMQ socket is served through its ``ZMQ_FD`` (see :class:`~zmqcross.relay.SocketLink`).
- **writers**: a descriptor to watch for room while a pipe's output is backed up.
- **flushes**: what handlers wrote during a round leaves once, at the round's end (one
  batch to the bridge, one write per pipe), however many messages the round handled.
- **timers**: deadlines of open work, on this thread's own heap.

The rest of the process (registration, heartbeats, spawning and watching clusters) stays
on asyncio and talks to the core through two queues, each with a wake-up:
:meth:`RelayCore.submit` runs a function on the core's thread, and an :class:`Upcalls`
runs one on an event loop. Nothing else crosses between the threads.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["CoreTimer", "RelayCore", "Upcalls", "shared_core"]

log = logging.getLogger("zmqcross.relay")

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT


class CoreTimer:
    """A call scheduled on the core's heap; :meth:`cancel` calls it off.

    A cancelled timer stays in the heap until it comes to the top, or until cancelled ones
    are half the heap and it is rebuilt: every eval's deadline timer is cancelled when the
    eval is answered, and with long deadlines they would otherwise pile up by the thousand.
    """

    __slots__ = ("args", "callback", "cancelled", "core", "when")

    def __init__(
        self, core: RelayCore, when: float, callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self.core = core
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.core.timer_cancelled()


class RelayCore:
    """The loop and its thread; see the module docstring.

    Everything but :meth:`submit`, :meth:`wake`, :meth:`start`, :meth:`stop` and
    :attr:`on_thread` runs on the core's own thread only, from handlers and submitted calls.
    It is also a :class:`~zmqcross._clock.Clock` (wall time for deadlines, timers on its heap).
    """

    def __init__(self, name: str = "zmqcross-relay") -> None:
        self._name = name
        self._poller = select.poll()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self._woken = False
        self._commands: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._every_round: list[Callable[[], bool]] = []
        self._again = False  # something sent this round may have left input unread: no sleep next
        self._flushes: list[Callable[[], None]] = []
        self._timers: list[tuple[float, int, CoreTimer]] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._running = False
        self._wake_fd = self._wake_in.fileno()
        self._poller.register(self._wake_fd, _POLLIN)

    # ------------------------------------------------------------------ any thread

    @property
    def on_thread(self) -> bool:
        """Whether the caller runs on the core's thread."""
        return threading.get_ident() == self._thread_id

    def start(self) -> None:
        """Start the thread (a daemon: the process does not wait for it)."""
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop after the current round and join the thread."""
        thread = self._thread
        if thread is None:
            return
        self.submit(self._halt)
        if thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the core's thread, in submission order, at its next round."""
        self._commands.append((fn, args))
        self.wake()

    def wake(self) -> None:
        """Make the core run a round now (after another thread changed something it serves)."""
        if self._woken:
            return
        self._woken = True
        try:
            self._wake_out.send(b"\0")
        except BlockingIOError:
            pass  # a wake-up is already waiting to be read

    # ------------------------------------------------------------------ the core's thread

    def add_reader(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable()`` whenever ``fd`` is readable."""
        self._readers[fd] = on_readable
        self._reregister(fd)

    def remove_reader(self, fd: int) -> None:
        self._readers.pop(fd, None)
        self._reregister(fd)

    def add_writer(self, fd: int, on_writable: Callable[[], None]) -> None:
        """Call ``on_writable()`` whenever ``fd`` has room (only while output waits for it)."""
        if fd not in self._writers:
            self._writers[fd] = on_writable
            self._reregister(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._reregister(fd)

    def every_round(self, poll: Callable[[], bool]) -> Callable[[], None]:
        """Call ``poll()`` in every round; it returns True while it has more to do (the round
        after it then does not sleep). Returns what removes it."""
        self._every_round = [*self._every_round, poll]  # replaced, never changed: rounds iterate it

        def remove() -> None:
            self._every_round = [p for p in self._every_round if p is not poll]

        return remove

    def again(self) -> None:
        """Run another round at once rather than sleep (a socket may hold input a send hid)."""
        self._again = True

    def defer_flush(self, flush: Callable[[], None]) -> None:
        """Call ``flush()`` once at the end of this round (register once per writer and round)."""
        self._flushes.append(flush)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> CoreTimer:
        timer = CoreTimer(self, time.monotonic() + max(delay, 0.0), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def timer_cancelled(self) -> None:
        """Count a cancelled timer; rebuild the heap without them once they are half of it."""
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._timers):
            self._timers = [entry for entry in self._timers if not entry[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def _reregister(self, fd: int) -> None:
        mask = (_POLLIN if fd in self._readers else 0) | (_POLLOUT if fd in self._writers else 0)
        if mask:
            self._poller.register(fd, mask)  # registering again changes the mask
        else:
            try:
                self._poller.unregister(fd)
            except KeyError:
                pass

    def _halt(self) -> None:
        self._running = False

    def _drain_wake(self) -> None:
        # Read the wake-ups first, then allow new ones: a wake() between the two would
        # otherwise leave the flag set with no byte to read, and no wake() would ever write again.
        try:
            while self._wake_in.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._woken = False

    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        _name_os_thread(self._name)
        busy = True
        while self._running:
            try:
                busy = self._round(busy)
            except Exception:  # a bug in one handler must not stop every machine's relaying
                log.exception("relay core: a round failed")
                busy = True
        self._wake_in.close()
        self._wake_out.close()

    def _round(self, busy: bool) -> bool:
        # One wake-up: what the poll found, what other threads asked for, the sockets, due
        # timers, then every write of the round at once. Kept to few calls: it runs per burst.
        events = self._poller.poll(0 if busy or self._commands else self._sleep_ms())
        readers, writers, wake_fd = self._readers, self._writers, self._wake_fd
        for fd, event in events:
            if fd == wake_fd:
                self._drain_wake()
                continue
            if event & _POLLOUT:
                writer = writers.get(fd)
                if writer is not None:
                    writer()
            if event & ~_POLLOUT:  # readable, or hung up / in error: the reader finds out which
                reader = readers.get(fd)
                if reader is not None:
                    reader()
        if self._woken:
            self._drain_wake()
        commands = self._commands
        while commands:
            fn, args = commands.popleft()
            fn(*args)
        more = False
        for poll in self._every_round:
            if poll():
                more = True
        if self._timers and self._timers[0][0] <= time.monotonic():
            self._run_timers()
        while self._flushes:
            flushes, self._flushes = self._flushes, []
            for flush in flushes:
                flush()
        if self._again:
            self._again = False
            return True
        return more

    def _sleep_ms(self) -> int | None:
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
            self._cancelled -= 1
        if not timers:
            return None
        return max(int((timers[0][0] - time.monotonic()) * 1000) + 1, 0)  # milliseconds, rounded up

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and (timers[0][0] <= now or timers[0][2].cancelled):
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer.cancelled = True  # fired: cancel() is a no-op now
                timer.callback(*timer.args)


def _name_os_thread(name: str) -> None:
    """Show the thread's name to the OS (``top -H``, ``ps -L``), on Linux; elsewhere nothing."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


class Upcalls:
    """Calls from the core's thread to one event loop, in order, one loop wake-up per burst."""

    __slots__ = ("_calls", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def __call__(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (called from the core's thread)."""
        self._calls.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._run)
            except RuntimeError:  # the loop is closed: its owner is gone, and so is the work
                self._calls.clear()

    def _run(self) -> None:
        self._scheduled = False
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("relay core: a call on the event loop failed")


_shared: RelayCore | None = None
_shared_lock = threading.Lock()


def shared_core() -> RelayCore:
    """This process's relay core, started on first use (every client and manager shares it)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RelayCore()
            _shared.start()
        return _shared
