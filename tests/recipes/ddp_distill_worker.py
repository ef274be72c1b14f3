"""Launched by test_distributed with ``torch.distributed.run``: distill a few updates, save this rank's weights,
the gradients of its first update and where it imported a2d from."""
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import a2d
from a2d.recipes import distill as recipe
from a2d.settings import load_config
from tests.recipes.first_update import first_update_gradients

data, teacher, out, resume, *overrides = sys.argv[1:]
torch.set_num_threads(1)
rank = int(os.environ.get("RANK", "0"))
with first_update_gradients(recipe, Path(out).parent / f"{Path(out).name}-grads-rank{rank}.safetensors"):
    result = recipe.distill(load_config("tiny-student", overrides), Path(data), Path(out), Path(teacher),
                            resume=resume == "resume", log=lambda *a: None)
tensors = {f"student.{k}": v.detach().cpu().clone().contiguous() for k, v in result.model.state_dict().items()
           if "embed_positions" not in k and k != "lm_head.weight" and "embed_tokens" not in k}
tensors["student.shared"] = result.model.get_input_embeddings().weight.detach().cpu().clone().contiguous()
save_file(tensors, str(Path(out) / f"rank{rank}.safetensors"))
(Path(out) / f"rank{rank}.updates").write_text(str(result.state.update))
(Path(out) / f"rank{rank}.a2d").write_text(str(Path(a2d.__file__).resolve().parent))
