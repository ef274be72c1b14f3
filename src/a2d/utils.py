"""Small shared helpers: atomic writes, user-facing errors, hashing, the process's peak memory."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from a2d.errors import OutputUnwritable, UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(path: str | Path, directory: bool = False) -> None:
    """Give a temporary file or folder (created 0600/0700) the permissions a normal one would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def check_output_file(path: Path | str) -> Path:
    """Refuse, before any work, an output file path that cannot be written: a folder, or a read-only place."""
    path = Path(path)
    if path.is_dir():
        raise OutputUnwritable(path, "is a folder; give a file name")
    check_writable_parent(path)
    return path


def check_writable_parent(path: Path | str) -> None:
    """Refuse, before any work, an output (file or folder) that cannot be made beside its siblings: the nearest
    existing folder above ``path`` is a file or cannot be written. Nothing is created in ``path`` itself."""
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputUnwritable(path, f"{parent} is a file, not a folder")
    check_writable_dir(parent, shown=path)


def check_writable_dir(folder: Path | str, shown: Path | str | None = None) -> None:
    """Create and remove a probe file in ``folder``; a one-line error if that fails (read-only, no space)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".a2d-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputUnwritable(shown or folder, f"cannot write in {folder} ({e.strerror})") from None


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder, then rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: Path | str):
    """Yield a temporary sibling folder; on success it replaces ``path`` whole, on failure it is removed.

    An interrupted writer therefore never leaves a folder at ``path`` that looks complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    _publish(tmp, directory=True)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: Path | str, default=None, hint: str = ""):
    """The JSON in ``path``; ``default`` where the file does not exist; a one-line :class:`UserError` naming the
    file where it is not JSON (``hint``: what to do about it)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise UserError(f"{path}: not valid JSON ({reason})" + (f"; {hint}" if hint else "")) from None


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_savefig(fig, path: Path | str, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        _publish(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes. On Linux it is ``VmHWM`` of ``/proc/self/status``: the peak
    of this process's own address space, which :func:`reset_peak_rss` can lower. Not ``getrusage``'s
    ``ru_maxrss``: Linux carries that over an ``exec``, so a spawned child reports at least its parent's size
    when it was started. Elsewhere ``ru_maxrss`` (bytes on macOS, KiB on the other systems)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> None:
    """Lower the peak :func:`peak_rss_bytes` reports to the memory resident now (Linux; elsewhere nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
