"""One malloc arena per zmqcross process: the relay thread and ZeroMQ's I/O thread share it.

Each test runs in a fresh interpreter (an arena, once made, lasts the process's life) and
counts the process's arenas with glibc's own ``malloc_info``. A thread's first allocation
gets it an arena of its own unless the process is capped; the cap is what keeps a
machine's big eval results, moved on its relay thread, from pinning memory in an arena of
their own (machines' RSS after the benchmark's heavy evals: about 70 MB without it, 54 with).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
        reason="malloc arenas are glibc's",
    ),
]

COUNT_ARENAS = textwrap.dedent(
    """
    import ctypes, os, tempfile

    def arenas():
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        fd, path = tempfile.mkstemp()
        os.close(fd)
        stream = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        with open(path) as report:
            text = report.read()
        os.unlink(path)
        return text.count("<heap nr=")
    """
)


def run_child(body: str, env: dict[str, str] | None = None) -> str:
    script = COUNT_ARENAS + textwrap.dedent(body)
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, env=environ
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


THREAD_ALLOCATES = """
import threading
kept = []
worker = threading.Thread(target=lambda: kept.append(bytearray(4 << 20)))
worker.start()
worker.join()
print(capped, arenas())
"""


def test_without_the_cap_a_thread_gets_an_arena_of_its_own() -> None:
    # The baseline the cap is measured against: if this ever fails, the tests below prove nothing.
    assert run_child("capped = None" + THREAD_ALLOCATES) == "None 2"


def test_the_cap_keeps_a_new_thread_in_the_one_arena() -> None:
    body = "from zmqcross._malloc import share_one_arena\ncapped = share_one_arena()" + THREAD_ALLOCATES
    assert run_child(body) == "True 1"


def test_a_user_set_malloc_arena_max_is_left_alone() -> None:
    body = "from zmqcross._malloc import share_one_arena\ncapped = share_one_arena()" + THREAD_ALLOCATES
    assert run_child(body, {"MALLOC_ARENA_MAX": "4"}) == "False 2"


def test_a_machines_relay_thread_and_zmq_io_thread_share_the_processs_arena() -> None:
    # What a machine process does: a ZeroMQ context and socket (the I/O thread), then the
    # relay core's thread, which moves a big result.
    body = """
    import threading
    import zmq
    from zmqcross._transport import new_context
    from zmqcross.relay import shared_core

    ctx = new_context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect("tcp://127.0.0.1:9")  # the I/O thread starts working, and allocating
    core = shared_core()
    kept, done = [], threading.Event()
    core.submit(lambda: (kept.append(bytearray(4 << 20)), done.set()))
    assert done.wait(10)
    print(arenas())
    core.stop()
    sock.close(0)
    ctx.term()
    """
    assert run_child(body) == "1"
