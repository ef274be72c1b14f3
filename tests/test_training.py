"""Mixed precision on the device at hand (:func:`a2d.training.make_accelerator`)."""
from __future__ import annotations

import pytest
import torch

from a2d import training
from a2d.errors import UserError
from a2d.settings import load_config

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's precision rules")


def _matmul_dtype(accelerator) -> torch.dtype:
    with accelerator.autocast():
        return (torch.randn(2, 4) @ torch.randn(4, 4)).dtype


@cpu_only
def test_auto_is_fp32_on_a_cpu():
    accelerator = training.make_accelerator(load_config("tiny-student", ["precision=auto"]))
    assert accelerator.mixed_precision == "no" and _matmul_dtype(accelerator) == torch.float32


@cpu_only
def test_bf16_on_a_cpu_with_bf16_instructions_autocasts(monkeypatch):
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    accelerator = training.make_accelerator(load_config("tiny-student", ["precision=bf16"]))
    assert accelerator.mixed_precision == "bf16" and _matmul_dtype(accelerator) == torch.bfloat16


@cpu_only
@pytest.mark.parametrize("precision, supported, words", [
    ("bf16", False, "this CPU has no bf16 instructions"),
    ("fp16", True, "fp16 mixed precision needs a GPU"),
])
def test_precision_the_cpu_cannot_run_is_refused(monkeypatch, precision, supported, words):
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: supported)
    with pytest.raises(UserError, match=f"precision={precision}: {words}"):
        training.make_accelerator(load_config("tiny-student", [f"precision={precision}"]))



@cpu_only
def test_recipes_in_one_process_each_get_their_own_precision(monkeypatch):
    """A grid trains its teacher and then its students in one process, each at its own precision."""
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    for precision, dtype in [("no", torch.float32), ("bf16", torch.bfloat16), ("no", torch.float32)]:
        accelerator = training.make_accelerator(load_config("tiny-student", [f"precision={precision}"]))
        assert accelerator.mixed_precision == precision and _matmul_dtype(accelerator) == dtype
