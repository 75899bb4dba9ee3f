"""The process heap while a model works: keep what it frees, hand it back once idle.

Speech models allocate large buffers for every window they encode and free them at once:
Whisper tiny.en's attention scores take 54 MB per layer (larger models more). glibc hands
blocks that large straight back to the kernel (mmap/munmap), so each 30 s window faulted
206 MB of zeroed pages back in: 52,700 page faults and a third of the encoder's time.
``keep_freed`` has glibc serve them from its heap and keep them there (no mmap; the heap's top
is trimmed only past 256 MB), so a request finds its buffers where the last one left them; and
it caps glibc at two arenas, or each of waitress's threads would keep its own scattered copy of
the uploads it read (RSS after a trim grew by 25 MB per 10-minute request until 16 arenas held
one). Call it before the server's threads start: rapl.http.server does, and the model worker again.
What was kept goes back with ``trim`` (``malloc_trim``), off the request path: once the model
has been idle a moment after a long transcription or a large upload (rapl.core.worker), and after an
unload. Trimming after every request, as RAPL once did, made each model stage 40-50 ms slower.

Elsewhere than glibc (macOS, Windows, musl) both are no-ops. A ``GLIBC_TUNABLES`` that sets
any ``glibc.malloc`` tunable is left to rule.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from typing import Any

log = logging.getLogger(__name__)

KEEP_TOP_BYTES = 256 * 2**20  # free memory at the heap's top kept without a trim
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
ARENAS = 2  # the main thread's and one that every other thread shares


@functools.cache
def _libc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


@functools.cache
def keep_freed() -> bool:
    """Keep freed memory in the heap for the next request (once per process); False where not glibc
    or where GLIBC_TUNABLES already tunes malloc."""
    libc = _libc()
    if libc is None or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, KEEP_TOP_BYTES), (_M_ARENA_MAX, ARENAS))
    if not all([libc.mallopt(option, value) for option, value in settings]):
        log.warning("glibc refused the heap settings (mallopt); large buffers are mapped per use")
        return False
    log.debug("heap: large blocks from the heap, kept up to %d MB at its top", KEEP_TOP_BYTES >> 20)
    return True


def trim() -> bool:
    """Return the free pages of every glibc arena to the system; False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
