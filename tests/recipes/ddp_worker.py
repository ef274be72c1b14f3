"""Launched by test_distributed with ``torch.distributed.run``: train a few updates, write this rank's weights hash
and where it imported a2d from."""
import hashlib
import sys
from pathlib import Path

import torch

import a2d
from a2d.recipes.train import train
from a2d.settings import load_config

data, out, *overrides = sys.argv[1:]
torch.set_num_threads(1)
result = train(load_config("tiny-student", overrides), Path(data), Path(out), log=lambda *a: None)
digest = hashlib.sha256()
for name, tensor in sorted(result.model.state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
(Path(out) / f"rank{rank}-of-{world}.sha256").write_text(f"{digest.hexdigest()} {result.state.update}\n")
(Path(out) / f"rank{rank}.a2d").write_text(str(Path(a2d.__file__).resolve().parent))
