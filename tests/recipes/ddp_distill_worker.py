"""Launched by test_distributed with ``torch.distributed.run``: distill a few updates, save this rank's weights."""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from a2d.config import load_config
from a2d.recipes.distill import distill

data, teacher, out, resume, *overrides = sys.argv[1:]
torch.set_num_threads(1)
result = distill(load_config("tiny-student", overrides), Path(data), Path(out), Path(teacher),
                 resume=resume == "resume", log=lambda *a: None)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
tensors = {f"student.{k}": v.detach().cpu().clone().contiguous() for k, v in result.model.state_dict().items()
           if "embed_positions" not in k and k != "lm_head.weight" and "embed_tokens" not in k}
tensors["student.shared"] = result.model.get_input_embeddings().weight.detach().cpu().clone().contiguous()
save_file(tensors, str(Path(out) / f"rank{rank}.safetensors"))
(Path(out) / f"rank{rank}.updates").write_text(str(result.state.update))
