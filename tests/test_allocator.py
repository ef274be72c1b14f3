"""a2d.allocator: on glibc, a large CPU tensor comes from the heap (brk), not from a memory map of its own."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt only")

HEAP_CHECK = r"""
def in_heap(address):
    heap = [line for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
    lo, hi = (int(v, 16) for v in heap[0].split()[0].split("-"))
    return lo <= address < hi
"""

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


# a library caller: the recipes run, then a 100 MiB tensor is allocated as the caller's own code would
LIBRARY = HEAP_CHECK + r"""
import sys, torch
from pathlib import Path
from a2d.recipes.distill import distill
from a2d.recipes.train import train
from a2d.settings import load_config
from tests.tiny import save_tiny_teacher, tiny_corpus
tmp = Path(sys.argv[1])
data = tiny_corpus(tmp / "data", 200)
teacher = save_tiny_teacher(tmp / "teacher", data, ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"])
small = ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1", "max_steps=1", "valid_max_sentences=2"]
train(load_config("tiny-student", small), data, tmp / "train", log=lambda *a: None)
distill(load_config("tiny-student", small + ["method=kd"]), data, tmp / "kd", teacher, log=lambda *a: None)
x = torch.empty(100 * 2**20, dtype=torch.uint8)
print(in_heap(x.data_ptr()))
"""

COMMAND = HEAP_CHECK + r"""
import contextlib, io, torch
from a2d.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["methods"]) == 0
x = torch.empty(100 * 2**20, dtype=torch.uint8)
print(in_heap(x.data_ptr()))
"""


def run_python(code: str, *args) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "A2D_MALLOC"}
    root = Path(__file__).resolve().parents[1]
    environ["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root), environ.get("PYTHONPATH", "")])
    environ["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=environ, capture_output=True, text=True,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_calling_the_library_leaves_the_allocator_alone(data_root, tmp_path):
    """train(...) and distill(...) in a program of the user's: its large blocks are still memory maps."""
    assert run_python(LIBRARY, tmp_path) == "False"


def test_the_command_applies_it():
    assert run_python(COMMAND) == "True"
