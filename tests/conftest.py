"""Shared fixtures: Multi30k wherever the tool finds it, and tiny models.

Multi30k comes from ``$A2D_DATA_DIR`` (CI sets it), else from ``../shared/data`` beside a checkout that has
one, else from the user cache that ``a2d prepare --corpus multi30k`` downloads into (downloaded there, and
checked against its SHA-256, when it is absent).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_SHARED = REPO.parent / "shared" / "data"
if not os.environ.get("A2D_DATA_DIR") and (_SHARED / "multi30k").is_dir():
    os.environ["A2D_DATA_DIR"] = str(_SHARED)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder that holds ``multi30k/`` with the corpus's gzip files."""
    from a2d.data.corpus import cache_dir, locate_corpus

    if os.environ.get("A2D_DATA_DIR"):
        root = Path(os.environ["A2D_DATA_DIR"])
        if not (root / "multi30k" / "train.de.gz").exists():
            pytest.fail(f"Multi30k not found under A2D_DATA_DIR={root}")
        return root
    locate_corpus("multi30k", "de", "en")  # the user cache; downloads what is missing
    return cache_dir("multi30k").parent


def corpus_sha256(data_root: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the corpus files: the shared folder's SHA256SUMS, else hashed here."""
    from a2d.utils import sha256_file

    sums = data_root / "multi30k" / "SHA256SUMS"
    if sums.is_file():
        return dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    return {p.name: sha256_file(p) for p in sorted((data_root / "multi30k").glob("*.gz"))}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine 2 threads ran 100x slower.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
