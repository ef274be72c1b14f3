"""The gradients a recipe's first optimizer step applies (after the all-reduce and any clipping), saved to a file.

Adam is nearly blind to the scale of the gradients, so weights after a few updates cannot tell a gradient sum
from a mean; the first update's gradients can.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from safetensors.torch import save_file


@contextlib.contextmanager
def first_update_gradients(recipe, path: Path):
    """While active, ``recipe.make_optimizer`` (a recipe module's) makes optimizers whose first ``step`` saves
    every parameter's gradient to ``path`` as ``"GROUP.INDEX"`` (the order the recipe gave its parameters)."""
    real = recipe.make_optimizer

    def recording(cfg, groups):
        optimizer = real(cfg, groups)

        def before_step(optimizer, args, kwargs):
            if not Path(path).exists():
                save_file({f"{g}.{i}": p.grad.detach().cpu().clone().contiguous()
                           for g, group in enumerate(optimizer.param_groups) for i, p in enumerate(group["params"])
                           if p.grad is not None}, str(path))

        optimizer.register_step_pre_hook(before_step)
        return optimizer

    recipe.make_optimizer = recording
    try:
        yield
    finally:
        recipe.make_optimizer = real
