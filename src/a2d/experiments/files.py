"""The text and JSON files of an experiment: hypotheses, references, results and manifests.

The lines of a file an experiment wrote (``test.hyp``, a prepared ``test.<lang>``, a stored ``.hyp.gz``) are read
back exactly as written (:func:`read_written_lines`: only ``\\n`` separates lines, nothing is stripped or replaced),
so that their sha256 (:func:`sha_lines`) is the one recorded when they were scored. A corpus given by a user is
read with :func:`a2d.data.corpus.read_lines` instead, which normalises it (whitespace, line-break characters).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from a2d.utils import read_json as utils_read_json


def sha_lines(lines: list[str]) -> str:
    """sha256 of the lines as a file, one per line (how hypotheses and references are identified)."""
    return hashlib.sha256("".join(x + "\n" for x in lines).encode("utf-8")).hexdigest()


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` as written: split at ``\\n`` only; a final newline does not make an extra line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_written_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file an experiment wrote, exactly as written (:func:`split_lines`)."""
    return split_lines(path.read_text(encoding="utf-8"))


def read_json(path: Path, default=None):
    """A results or manifest JSON file (``default`` when it is missing; invalid JSON is a one-line error)."""
    return utils_read_json(path, default, hint="remove it or fix it")


__all__ = ["sha_lines", "split_lines", "read_written_lines", "read_json"]
