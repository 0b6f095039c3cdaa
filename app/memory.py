"""What a served process does about its memory (`errorgraph serve` turns it on with the
`gc_freeze` setting; tests, which build many apps in one process, leave it off).

The interpreter's collector and glibc's allocator are both tuned for programs whose
objects come and go in small sizes. A served errorgraph mostly does, but now and then takes
a body of tens of MiB (a source map), which parses into as much again: without these, what
such a request allocated stayed resident long after it ended.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import platform


def tune_garbage_collector() -> None:
    """Move everything alive after start-up (modules, the schema, SQLAlchemy's and
    pydantic's caches: most of the heap) out of the collector's sight, and collect the
    young generation less often. Each request allocates thousands of short-lived objects;
    with the defaults the collector ran several times a request and walked the whole
    start-up heap at every full pass: a sixth of the CPU of a one-event request."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)


# glibc's mallopt parameter for the size from which blocks are mapped on their own.
_M_MMAP_THRESHOLD = -3


def return_large_blocks(threshold: int = 128 * 1024) -> bool:
    """Give blocks of `threshold` bytes and more back to the system as soon as they are
    freed. glibc maps such blocks on their own, but raises that size to each one it
    frees, up to 32 MiB: after one large upload (a source map) the bodies, strings and
    parses of the next ones of that size came from its heap and stayed there, and a
    process idling at 100 MiB kept 440 after a 30 MiB source map (300 with this).
    Setting the size fixes it. False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    try:
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except AttributeError:
        return False


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def trim_heap() -> bool:
    """Give the free pages inside glibc's heaps back to the system (`malloc_trim`). A heap
    only shrinks from its top on its own, so the pages freed below a block still in use
    stay resident: after a 30 MiB source map, 48 MiB of them in the heap of the thread
    that parsed it. Takes a few milliseconds. False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except AttributeError:
        return False
    return True


class LargeBodyGarbage:
    """Runs a full garbage collection once the requests that ended since the last one
    brought `every` bytes in bodies of `large` bytes or more.

    A request's objects that are still alive at a young generation's pass move on to the
    oldest one, and a long request's are (a source map upload parses for seconds), which
    a served process collects only every ten million allocations or so
    (`tune_garbage_collector`). Some handlers leave their objects in reference
    cycles that only a collection frees: graphql-core's executor holds bound methods of
    itself, and with them the request, its body and its variables. Each 30 MiB source map
    uploaded through GraphQL kept ~90 MiB that way (the body, its JSON string, the map's
    bytes): a process idling at 109 MiB held 984 after seven. Smaller bodies are not
    counted: what they leave is small, the collector's cadence bounds it, and a collection
    per batch of events would cost the ingest rate."""

    def __init__(self, *, every: int = 16 * 1024 * 1024, large: int = 1024 * 1024) -> None:
        self.every = every
        self.large = large
        self.pending = 0
        self.collections = 0

    def ended(self, received: int) -> None:
        """A request that read `received` bytes of body has ended (its answer is sent)."""
        if received < self.large:
            return
        self.pending += received
        if self.pending >= self.every:
            self.pending = 0
            self.collections += 1
            gc.collect()
            trim_heap()
