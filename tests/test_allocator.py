"""a2d.allocator: on glibc, a large CPU tensor comes from the heap (brk), not from a memory map of its own."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt only")

PROBE = r"""
import sys, torch
from a2d.allocator import keep_large_allocations
done = keep_large_allocations()
x = torch.empty(100 * 2**20, dtype=torch.uint8)  # above glibc's default mmap threshold (128 KiB .. 32 MiB)
address = x.data_ptr()
heap = [line for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
lo, hi = (int(v, 16) for v in heap[0].split()[0].split("-"))
print(done, lo <= address < hi)
"""


def probe(**env) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "A2D_MALLOC"}
    return subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_large_tensors_come_from_the_heap():
    assert probe() == "True True"


def test_opt_out_and_the_users_own_setting():
    assert probe(A2D_MALLOC="default") == "False False"
    assert probe(MALLOC_TRIM_THRESHOLD_="1048576") == "False False"  # the user's glibc setting stands
