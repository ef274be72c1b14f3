"""A small prepared Multi30k slice, tiny-model overrides and a signal sender shared by the recipe tests."""
from __future__ import annotations

import os
import signal

import pytest

from a2d import training
from a2d.data.corpus import locate_corpus
from a2d.data.prepare import prepare

# A model small enough to train for a few epochs in seconds on two CPU cores.
TINY = ["d_model=64", "ffn_dim=128", "encoder_layers=2", "decoder_layers=2", "lr=3e-3", "warmup_updates=30",
        "max_tokens=1024", "valid_max_sentences=100", "log_every=5", "dropout=0.1"]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("data") / "m30k"
    prepare(out, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=1000, max_train=2000,
            log=lambda *a: None)
    return out


def signal_at(monkeypatch, update: int, signum=signal.SIGINT):
    """Send ``signum`` to this process (through the real handler) as update ``update`` ends."""
    original = training.SavePoints.due

    def due(self, n):
        if n == update:
            os.kill(os.getpid(), signum)
        return original(self, n)

    monkeypatch.setattr(training.SavePoints, "due", due)
