"""A fixed glibc mmap threshold, so that the peak memory of the ``O(L N^2)`` metrics is the one
``alignment.quadratic_memory`` estimates, run after run, and every pair's peaks are those its
code makes (``alignment.quadratic_memory_reserved`` fixes it as each pair starts, and
``tasks.metrics.api.encode_pair`` as every engine entry point does: the engine used on its own).

glibc serves an allocation of at least its mmap threshold with a fresh mapping, returned to the
system when freed, and a smaller one from its heap, where a freed block that is not at the top
stays resident. The threshold is raised dynamically (up to 32 MiB) each time a mapped block is
freed, so which of the engine's ``N x N`` buffers end on the heap, and how long they stay
resident after they are freed, depends on the order of all earlier allocations: RBF CKA of 2 + 2
layers at N = 4,000 peaked at 608, 736, 800, 896 or 962 MB from one process to the next (with the
hash seed alone), against an estimate of 624 MB, so a pair admitted as fitting could be killed.
With the threshold fixed at 16 MiB (which stops the dynamic adjustment): 608 MB every time.
Smaller buffers (the 4 MiB Gram matrices at N = 1,024) still come from the heap and reuse its
pages; the heap's top is kept up to ``TRIM_THRESHOLD_BYTES`` (twice the threshold, glibc's own
rule for its dynamic pair) so that freeing and reusing such a buffer does not fault its pages in
again.
"""

from __future__ import annotations

import ctypes
import platform
import threading

#: allocations of at least this many bytes are mapped, and unmapped when freed
MMAP_THRESHOLD_BYTES = 16 << 20
#: free bytes kept at the top of the heap before it is trimmed
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES
# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_pinned: bool | None = None


def pin_mmap_threshold() -> bool:
    """Fix this process's glibc mmap and trim thresholds (``MMAP_THRESHOLD_BYTES``,
    ``TRIM_THRESHOLD_BYTES``), once; True where they are fixed, False where the C library is not
    glibc (its allocator's peaks are its own) or refused them."""
    global _pinned
    with _lock:
        if _pinned is None:
            _pinned = _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        return _pinned


def _mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False off glibc or where it fails (returns 0)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:  # the process's own symbols, glibc's among them (``find_library`` would run ``ldconfig -p``)
        mallopt = ctypes.CDLL(None).mallopt
        return bool(mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    except (OSError, AttributeError):
        return False
