"""Shared fixtures: the shared Multi30k data (``$A2D_DATA_DIR``, default ``../shared/data``) and tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("A2D_DATA_DIR", str(REPO.parent / "shared" / "data"))
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["A2D_DATA_DIR"])
    if not (root / "multi30k" / "train.de.gz").exists():
        pytest.fail(f"Multi30k not found under A2D_DATA_DIR={root}")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine 2 threads ran 100x slower.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
