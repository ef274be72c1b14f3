"""Where a number came from: the hardware and the commit, recorded beside every benchmark result."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch


def hardware() -> str:
    """The GPU's name, or the CPU model and the number of torch threads."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{model or platform.processor() or platform.machine()} CPU, {threads} thread{'s' if threads != 1 else ''}"


@functools.lru_cache(maxsize=None)
def git_commit(cwd: str | None = None) -> str:
    """Short hash of HEAD, with ``+dirty`` when tracked files differ from it; ``unknown`` outside a checkout."""
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, cwd=cwd)
        head = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
