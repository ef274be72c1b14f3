"""Data-parallel training and distillation: two CPU processes (gloo) under torch.distributed.run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import a2d
from a2d.recipes import distill as distill_recipe
from a2d.recipes.distill import distill
from a2d.recipes.train import train
from a2d.settings import load_config
from tests.recipes.conftest import TINY
from tests.recipes.first_update import first_update_gradients

WORKER = Path(__file__).with_name("ddp_worker.py")
DISTILL_WORKER = Path(__file__).with_name("ddp_distill_worker.py")
ROOT = Path(__file__).resolve().parents[2]
UNDER_TEST = Path(a2d.__file__).resolve().parent  # the a2d these tests import: the workers must import it too


def worker_env() -> dict:
    """The workers import the code under test (its src/ first, then the checkout for tests.*), not whatever a2d
    is installed."""
    path = [str(UNDER_TEST.parent), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def launch(worker: Path, *args, port: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(worker), *map(str, args)]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_end_with_identical_weights(small_data, tmp_path):
    out = tmp_path / "ddp"
    launch(WORKER, small_data, out, *TINY, "max_steps=4", "max_tokens=600", "log_every=1", port=29533)
    assert [(out / f"rank{r}.a2d").read_text() for r in range(2)] == [str(UNDER_TEST)] * 2
    hashes = [(out / f"rank{r}-of-2.sha256").read_text().split() for r in range(2)]
    assert hashes[0] == hashes[1]  # same weights, same number of updates
    assert hashes[0][1] == "4"
    # only the main process wrote checkpoints and the metrics log
    assert (out / "last" / "model.safetensors").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def ddp_teacher(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp-teacher") / "t"
    train(load_config("tiny-teacher", TINY + ["max_steps=3", "encoder_layers=3", "decoder_layers=3"]), small_data, run,
          log=lambda *a: None)
    return run


# the method's AAM too is trained; lambda decays per update so that the schedule's position matters
A2D = TINY + ["method=a2d", "max_tokens=500", "log_every=1", "lambda_decay_unit=update", "lambda_decay=0.9",
              "valid_max_sentences=10"]


def test_two_process_a2d_equals_one_process_over_the_same_global_batches(small_data, ddp_teacher, tmp_path):
    """Rank r takes batches r, r+2, ...; one process with update_freq=2 takes batches (0, 1), (2, 3), ...

    Both average the two batches' gradients, the student's (DDP) and the AAM's (reduced by hand). Adam hides a
    gradient's scale from the weights, so the first update's gradients are compared too: a sum in place of the
    mean doubles them.
    """
    cfg = A2D + ["dropout=0", "max_steps=4"]
    launch(DISTILL_WORKER, small_data, ddp_teacher, tmp_path / "ddp", "new", *cfg, port=29541)
    assert [(tmp_path / "ddp" / f"rank{r}.a2d").read_text() for r in range(2)] == [str(UNDER_TEST)] * 2
    ranks = [load_file(tmp_path / "ddp" / f"rank{r}.safetensors") for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    with first_update_gradients(distill_recipe, tmp_path / "one-grads.safetensors"):
        single = distill(load_config("tiny-student", cfg + ["update_freq=2"]), small_data, tmp_path / "one",
                         ddp_teacher, log=lambda *a: None)
    assert single.state.update == 4
    grads = [load_file(tmp_path / f"ddp-grads-rank{r}.safetensors") for r in range(2)]
    one = load_file(tmp_path / "one-grads.safetensors")
    assert grads[0].keys() == grads[1].keys() == one.keys() and any(k.startswith("1.") for k in one)  # 1.*: the AAM
    for k in one:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=0, rtol=0, msg=k)  # every rank applies the same
        scale = float(one[k].norm())
        if scale > 1e-6:  # (k_proj biases: rounding noise, the softmax ignores them)
            assert float((grads[0][k] - one[k]).norm()) <= 1e-4 * scale, (k, float(grads[0][k].norm()), scale)
    weights = {**{f"student.{k}": v for k, v in single.model.state_dict().items()},
               "student.shared": single.model.get_input_embeddings().weight}
    diffs = {k: float((v - weights[k].detach()).abs().max()) for k, v in ranks[0].items()
             if not k.endswith("k_proj.bias")}  # softmax ignores it: its gradient is rounding noise that Adam scales up
    assert max(diffs.values()) < 1e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    aam = [load_file(tmp_path / run / "last" / "trainer" / "method.safetensors") for run in ("ddp", "one")]
    assert aam[0].keys() == aam[1].keys() and aam[0]
    for k in aam[0]:
        torch.testing.assert_close(aam[0][k], aam[1][k], atol=1e-5, rtol=0, msg=k)
        assert not torch.equal(aam[0][k], torch.zeros_like(aam[0][k]))


def test_two_process_resume_restores_each_ranks_rng(small_data, ddp_teacher, tmp_path):
    """With dropout, each rank draws its own masks; a resumed run matches an uninterrupted one on both ranks."""
    cfg = A2D + ["dropout=0.3"]
    launch(DISTILL_WORKER, small_data, ddp_teacher, tmp_path / "straight", "new", *cfg, "max_steps=4", port=29542)
    launch(DISTILL_WORKER, small_data, ddp_teacher, tmp_path / "split", "new", *cfg, "max_steps=2", port=29543)
    launch(DISTILL_WORKER, small_data, ddp_teacher, tmp_path / "split", "resume", *cfg, "max_steps=4", port=29544)
    rng = torch.load(tmp_path / "split" / "last" / "trainer" / "rng.pt", weights_only=True)
    assert len(rng["ranks"]) == 2 and not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])
    for r in range(2):
        a = load_file(tmp_path / "straight" / f"rank{r}.safetensors")
        b = load_file(tmp_path / "split" / f"rank{r}.safetensors")
        assert (tmp_path / "split" / f"rank{r}.updates").read_text() == "4"
        assert all(torch.equal(a[k], b[k]) for k in a), r
