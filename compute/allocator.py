"""Freed tensor memory stays in the process for the next batch instead of going back to the system.

By default glibc hands a freed block of more than its (adaptive) mmap threshold back to the system,
and trims the heap's free top beyond twice that threshold; the next batch's tensor of the same size
then page-faults every page in again, zero-filled by the kernel. The stages after training move
tensors of 1 to 20 MB per operation (a batch of 1,000 conv1 outputs of LeNet-5 is 19 MB), so on one
thread page faults took up to 45% of an evaluation pass (20,000 Fashion-MNIST images 0.91 -> 0.53 s
CPU, page faults 198,000 -> 8,700; README "Speed of a whole run"). A fixed mmap threshold of 32 MiB
(glibc's largest) and a trim threshold of 256 MiB keep such blocks in the heap for reuse; larger
tensors are still mapped and unmapped each time, and at most 256 MiB of free heap is kept.

Values are untouched (only where memory comes from). Off glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 256 * 2**20

_done = False


def keep_freed_memory() -> bool:
    """Set this process's glibc thresholds once; True when they are in effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
