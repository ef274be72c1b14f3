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
