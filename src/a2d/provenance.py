"""Where a number came from: the hardware, the code (the checkout's commit) and the time, recorded beside every
benchmark result; and where the checkout is, when a2d runs from one."""
from __future__ import annotations

import functools
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import a2d


def source_checkout(module_file: Path | str = __file__) -> Path | None:
    """The source checkout a2d runs from: the folder holding ``pyproject.toml`` and ``src/a2d/`` (an editable
    install, or ``src`` on the path). None when a2d is installed from a wheel (it lies in site-packages)."""
    package = Path(module_file).resolve().parent
    root = package.parents[1]
    return root if package == root / "src" / "a2d" and (root / "pyproject.toml").is_file() else None


#: The checkout this a2d runs from (grid paths are written relative to it, its commit is recorded), or None.
CHECKOUT = source_checkout()


def hardware() -> str:
    """The GPU's name, or the CPU model and the number of torch threads."""
    import torch

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


def commit() -> str:
    """The code a result was made with: the checkout's commit (:func:`git_commit`), or ``a2d <version>`` when a2d
    is installed from a wheel (never the commit of whatever repository the command runs in)."""
    return git_commit(str(CHECKOUT)) if CHECKOUT is not None else f"a2d {a2d.__version__}"


def now() -> str:
    """The time in UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["source_checkout", "CHECKOUT", "hardware", "git_commit", "commit", "now"]
