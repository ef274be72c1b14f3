"""``seq-kd``: sequence-level knowledge distillation (Kim & Rush 2016).

Kim & Rush 2016 (section 3.2): instead of matching the teacher's distribution over every possible
translation, approximate it by its mode, the teacher's beam-search output ``y_hat`` for each training
source, and train the student on those pairs with the ordinary cross-entropy:

    L_SEQ-KD ~ -log p_S(y_hat | x),    y_hat = beam search of the teacher on x

So the method lies in the data, not in the loss: ``a2d distill-data --teacher RUN --data DIR --out
DIR2`` decodes the training sources with the teacher (beam 5 by default) and writes a data directory
whose train targets are the teacher's translations (its ``meta.json`` records ``distilled_from``;
valid and test keep the human references), then ``a2d distill --method seq-kd --data DIR2`` trains
with cross-entropy alone and needs no teacher at training time.

How the A2D paper uses it: the Table 1 "Sequence KD" baseline. The cross-entropy here is the recipe's
label-smoothed one (``label_smoothing``, 0.1 as for every student); the interpolated and combined
variants of Kim & Rush (Seq-Inter, Seq-KD + Word-KD) are not implemented.
"""
from __future__ import annotations

from a2d.errors import NotDistilledData
from a2d.methods.base import DistillMethod, Progress


def check_data(meta: dict, data_dir=None) -> None:
    """Refuse a data directory that ``a2d distill-data`` did not write (its ``meta.json`` lacks ``distilled_from``)."""
    if not isinstance(meta, dict) or "distilled_from" not in meta:
        raise NotDistilledData("seq-kd", data_dir)


class SequenceKD(DistillMethod):
    """Sequence-level KD: cross-entropy only, on a data directory written by ``a2d distill-data``. No terms."""

    name = "seq-kd"
    label = "Sequence KD"
    generated_data = True
    summary = ("sequence-level KD: cross-entropy on the teacher's beam outputs; run `a2d distill-data` first "
               "and train on its output directory")
    paper = "Kim & Rush 2016, Sequence-Level Knowledge Distillation"
    needs = frozenset()
    needs_teacher = False
    check_data = staticmethod(check_data)  # the distill recipe calls it with the data directory's meta.json

    def loss_terms(self, batch, student, teacher, progress: Progress):
        return {}

    def weights(self, progress: Progress):
        return {}


__all__ = ["NotDistilledData", "SequenceKD", "check_data"]
