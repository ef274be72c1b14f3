"""Distillation methods, one file each, registered by name in :data:`METHODS`.

Adding a method: write ``methods/NAME.py`` with a :class:`~a2d.methods.base.DistillMethod`
subclass and add it to the dict below; ``a2d distill --method NAME`` and ``a2d methods`` pick it up.
"""
from __future__ import annotations

from a2d.errors import UnknownMethod
from a2d.methods.a2d import A2DLayerwise, AlignToDistill
from a2d.methods.alp_kd import ALPKD
from a2d.methods.base import (ATTENTIONS, HIDDEN_STATES, KD_TERM, LOGITS, DistillMethod, MethodSettings, Progress,
                             TeacherRequired)
from a2d.methods.ckd import CombinatorialKD
from a2d.methods.kd import WordKD
from a2d.methods.minilm import MiniLM
from a2d.methods.none import NoKD
from a2d.methods.pkd import PatientKD
from a2d.methods.selective_kd import SelectiveKD
from a2d.methods.seq_kd import NotDistilledData, SequenceKD
from a2d.methods.tinybert import TinyBERT

METHODS: dict[str, type[DistillMethod]] = {
    "none": NoKD,
    "a2d": AlignToDistill,
    "a2d-layerwise": A2DLayerwise,
    "kd": WordKD,
    "selective-kd": SelectiveKD,
    "seq-kd": SequenceKD,
    "tinybert": TinyBERT,
    "minilm": MiniLM,
    "alp-kd": ALPKD,
    "pkd": PatientKD,
    "ckd": CombinatorialKD,
}


#: The methods whose KD term can read a teacher cache (``kd_cache=``), by name.
CACHE_READERS: tuple[str, ...] = tuple(name for name, cls in METHODS.items() if cls.reads_kd_cache)


def get_method(name: str) -> type[DistillMethod]:
    """The method class registered as ``name``; :class:`UnknownMethod` if there is none."""
    if name not in METHODS:
        raise UnknownMethod(name, sorted(METHODS))
    return METHODS[name]


__all__ = ["METHODS", "CACHE_READERS", "DistillMethod", "MethodSettings", "Progress", "get_method", "ATTENTIONS", "HIDDEN_STATES",
           "LOGITS", "KD_TERM", "NotDistilledData", "TeacherRequired", "UnknownMethod"]
