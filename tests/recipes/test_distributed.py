"""Data-parallel training: two CPU processes (gloo) under torch.distributed.run end with identical weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.recipes.conftest import TINY

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_end_with_identical_weights(small_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(WORKER), str(small_data), str(out), *TINY, "max_steps=4", "max_tokens=600", "log_every=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [(out / f"rank{r}-of-2.sha256").read_text().split() for r in range(2)]
    assert hashes[0] == hashes[1]  # same weights, same number of updates
    assert hashes[0][1] == "4"
    # only the main process wrote checkpoints and the metrics log
    assert (out / "last" / "model.safetensors").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
