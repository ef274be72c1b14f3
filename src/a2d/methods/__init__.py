"""Distillation methods, one file each, registered by name in :data:`METHODS`.

Adding a method: write ``methods/NAME.py`` with a :class:`~a2d.methods.base.DistillMethod`
subclass and add it to the dict below; ``a2d distill --method NAME`` and ``a2d methods`` pick it up.
"""
from __future__ import annotations

from a2d.methods.a2d import A2DLayerwise, AlignToDistill
from a2d.methods.base import ATTENTIONS, HIDDEN_STATES, LOGITS, DistillMethod, Progress
from a2d.methods.none import NoKD
from a2d.utils import UserError

METHODS: dict[str, type[DistillMethod]] = {
    "none": NoKD,
    "a2d": AlignToDistill,
    "a2d-layerwise": A2DLayerwise,
}


def get_method(name: str) -> type[DistillMethod]:
    if name not in METHODS:
        raise UserError(f"--method {name}: unknown method (choose from {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["METHODS", "DistillMethod", "Progress", "get_method", "ATTENTIONS", "HIDDEN_STATES", "LOGITS"]
