"""Keep large CPU tensors in the heap instead of fresh memory maps (glibc only).

On the CPU, every distillation step makes and frees several tensors of batch tokens x vocabulary floats (the
student's and the teacher's log-probabilities, their gradients: about 65 MB each at 2,048 tokens and 8,000
pieces). glibc's ``malloc`` serves any block above its mmap threshold (128 KiB, raised dynamically only up to
32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed, so each such tensor costs the kernel
a page fault per 4 KiB page it touches, zeroed. Measured on a 2-core CPU (commit 9322c68, the tiny presets):
a third of a KD step's CPU time was system time, and the KD step ran 65% above its bound (docs/results.md,
"Training throughput").

:func:`keep_large_allocations` raises the mmap threshold to 1 GiB and the trim threshold (how much freed
memory at the top of the heap is kept) to 1 GiB, with ``mallopt``: freed blocks are then reused by the next
step. The cost is resident memory: the heap keeps what a step freed (about 300 MiB more at the peak in that
benchmark), and the setting holds for the rest of the process, whatever else it runs (a freed 600 MiB array
stays resident).

Only the ``a2d`` command applies it (:func:`a2d.cli.main`, before any command runs). A program that calls
the library (``a2d.recipes.distill.distill(...)``, ``train``) keeps its own allocator unless it opts in::

    from a2d.allocator import keep_large_allocations
    keep_large_allocations()  # once, before training

It does nothing where the C library is not glibc, where ``A2D_MALLOC=default`` is set (the command's opt
out), or where the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (their
choice stands).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
THRESHOLD = 1 << 30  # 1 GiB, for both

_done: bool | None = None


def keep_large_allocations() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); True where they were set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if (platform.system() != "Linux" or os.environ.get("A2D_MALLOC") == "default"
            or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))):
        return _done
    if platform.libc_ver()[0] != "glibc":
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return _done
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    return _done


__all__ = ["keep_large_allocations"]
