"""``none``: the "No KD" student of the paper's tables: label-smoothed cross-entropy only."""
from __future__ import annotations

from a2d.methods.base import DistillMethod


class NoKD(DistillMethod):
    name = "none"
    label = "No KD"
    baseline = "nokd"
    summary = "cross-entropy only: the 'No KD' student"
    paper = "(baseline without distillation)"
    needs = frozenset()
    needs_teacher = False
    families = None

    def loss_terms(self, batch, student, teacher, progress):
        return {}

    def weights(self, progress):
        return {}
