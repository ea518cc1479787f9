"""A process-wide budget on decoded pixels in flight, and giving freed heap memory back to the OS.

Why: a ~300 kB PNG of 10,000 x 10,000 pixels is 300-400 MB once decoded. Decoding is done in
several threads (`facecli check`) and several requests at once (`facecli serve`), so without a
budget N such files cost N times that, and glibc keeps most of it after the burst. Every decode
reserves the pixels it will hold at full size before it allocates them (:meth:`PixelBudget.reserve`);
decodes that do not fit wait their turn (first come, first served), and a single image larger than
the whole budget runs alone instead of failing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

#: Default process-wide budget: full-size decoded pixels in flight at once. Pillow holds RGB and RGBA
#: at 4 bytes a pixel, so 64 MP is ~256 MB; one image at the full-size-decode cap fits, two wait.
MAX_MEGAPIXELS_IN_FLIGHT = 64.0

#: After a decode holding at least this many pixels, return freed heap pages to the OS (glibc).
TRIM_AFTER_PIXELS = 8_000_000

#: Allocations at least this big get their own mapping, handed back to the OS when freed. glibc
#: starts at 128 KiB but raises the threshold up to 32 MiB after each big free, after which freed
#: request bodies and decode buffers stay in the heap (measured: +120 MB held by `facecli serve`
#: after a burst of 6 x 4 large JPEGs, +33 MB with this; bench/memory.py).
MMAP_THRESHOLD_BYTES = 1 << 20


class PixelBudget:
    """A counting semaphore on pixels, fair (FIFO) so that large images are not starved by small ones."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 pixel")
        self.capacity = int(capacity)
        self._used = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def in_flight(self) -> int:
        """Pixels reserved right now."""
        return self._used

    @property
    def waiting(self) -> int:
        """Reservations queued behind the budget."""
        return len(self._queue)

    def acquire(self, pixels: int, timeout: float | None = None) -> int:
        """Reserve ``pixels`` (at most the whole budget); blocks until they fit. Returns the amount
        reserved, to pass to :meth:`release`; raises ``TimeoutError`` after ``timeout`` seconds."""
        n = max(0, min(int(pixels), self.capacity))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                ok = self._cond.wait_for(lambda: self._queue[0] is ticket and self._used + n <= self.capacity,
                                         timeout)
                if not ok:
                    raise TimeoutError(f"{n} pixels did not fit in the decode budget within {timeout} s")
                self._used += n
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
        return n

    def release(self, reserved: int) -> None:
        with self._cond:
            self._used = max(0, self._used - reserved)
            self._cond.notify_all()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[int]:
        """``with budget.reserve(w * h):`` hold the pixels for the block; heap trimmed after big ones."""
        n = self.acquire(pixels)
        try:
            yield n
        finally:
            try:
                if pixels >= TRIM_AFTER_PIXELS:  # before the next decode may allocate in another arena
                    trim_heap()
            finally:
                self.release(n)


DEFAULT_BUDGET = PixelBudget(int(MAX_MEGAPIXELS_IN_FLIGHT * 1e6))

_malloc_trim = _mallopt = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None)
        _malloc_trim, _mallopt = _libc.malloc_trim, _libc.mallopt  # glibc; absent on musl
        _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        _mallopt.argtypes, _mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        _malloc_trim = _mallopt = None
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_heap_tuned = False


def tune_heap() -> bool:
    """Once per process: fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES` (unless the user
    set one through MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES). Returns True when it was set now."""
    global _heap_tuned
    if _heap_tuned or _mallopt is None:
        return False
    _heap_tuned = True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return bool(_mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def trim_heap() -> bool:
    """Hand the free pages of every malloc arena back to the OS (glibc ``malloc_trim``).

    Large decode buffers are freed into per-thread arenas that glibc keeps for reuse; after a burst
    of big images that was 1.5 GB held by `facecli serve` for nothing. Returns False where unavailable."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
