"""The throughput benchmark times the recipes' steps under the precision the recipes would use."""
from __future__ import annotations

import pytest
import torch

from a2d import training
from a2d.experiments import throughput as tp

cpu = torch.device("cpu")


def _dtype(autocast) -> torch.dtype:
    with autocast():
        return (torch.randn(2, 4) @ torch.randn(4, 4)).dtype


@pytest.mark.parametrize("precision, dtype", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_the_timed_step_runs_at_the_asked_precision(precision, dtype, monkeypatch):
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    assert _dtype(tp._autocast(cpu, precision)) == dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto's CPU rule")
def test_auto_is_fp32_on_a_cpu():
    assert _dtype(tp._autocast(cpu, "auto")) == torch.float32


def test_markdown_names_the_precision():
    info = {"hardware": "h", "commit": "c", "torch": "t", "max_tokens": 2048, "batches": 1, "tokens": 10,
            "rounds": 1, "precision": "bf16", "command": "x", "rows": [], "memory": "m", "profiles": {}}
    assert "precision bf16" in tp.markdown(info).splitlines()[0]
