"""``ckd``: Combinatorial KD (Wu et al. 2020), fused groups of teacher layers matched to student layers + word KD.

Wu et al. give every student layer ``i`` a group ``C(i)`` of teacher layers, fuse them
and match the fusion with the student layer, so that no teacher layer is skipped:

    f^T_i  = W_i [h^T_j ; j in C(i)] + b_i         (concatenation, then a learned linear projection)
    L_CKD  = sum_{i=1}^{N_S} MSE(h^S_i, f^T_i)
    L      = L_CE + feature_weight * L_CKD + mu_kd * L_KD          (L_KD: word-level KD, Hinton)

The groups are fixed before training by the setting ``ckd_grouping`` (:func:`ckd_groups`, 1-based teacher
layers; sizes differ by at most one when N_T is not a multiple of N_S):

* ``sc`` sequential combination, contiguous groups in order:
  6 -> 3 ``[[1, 2], [3, 4], [5, 6]]``; 4 -> 2 ``[[1, 2], [3, 4]]``; 7 -> 3 ``[[1, 2, 3], [4, 5], [6, 7]]``.
* ``cc`` cross combination, teacher layer j goes to group ``(j - 1) mod N_S``:
  6 -> 3 ``[[1, 4], [2, 5], [3, 6]]``; 4 -> 2 ``[[1, 3], [2, 4]]``.
* ``rc`` random combination: the teacher layers shuffled by ``random.Random(seed)`` (seed 0, fixed, so
  every run, whatever its ``seed``, uses the same groups) and cut into the ``sc`` group sizes, each
  group sorted; drawn again (same generator) while the partition equals the ``sc`` or ``cc`` one, so
  ``rc`` is a third configuration whenever one exists: 6 -> 3 ``[[3, 5], [1, 2], [4, 6]]``;
  4 -> 2 ``[[2, 3], [1, 4]]``.
* ``oc`` overlap combination: windows of ``ceil(N_T / N_S) + 1`` consecutive teacher layers, spread
  evenly from layer 1 to layer N_T (window starts ``1 + round(i * (N_T - size) / (N_S - 1))``, halves rounded up), so
  neighbouring groups share layers: 6 -> 3 ``[[1, 2, 3], [3, 4, 5], [4, 5, 6]]``; 4 -> 2 ``[[1, 2, 3], [2, 3, 4]]``.

The four names are the A2D paper's ``-sc/-cc/-rc/-oc``; the exact groups above are this code's
definitions (the tables are checked by the tests), not copied from Wu et al.'s figures.

Adaptation to this code base (as in the A2D paper, which reports CKD-sc/-cc with 2-layer students
and notes CKD is applied to the encoder only because it hurt on the decoder): encoder side only;
the MSE is the per-token mean over features, averaged over the real source tokens of the batch
(padding never enters), summed over the student layers. Each group has its own projection
``Linear(|C(i)| * d_T, d_S)`` (owned by the method, trained with the student), so the teacher and
student widths may differ. The top student layer is matched too (all teacher layers are used).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn
from transformers import MarianConfig

from a2d.config import setting
from a2d.methods.features import FeatureSettings, HiddenStateKD, real_tokens, token_mse
from a2d.utils import UserError

CKD_GROUPINGS = ("sc", "cc", "rc", "oc")


@dataclass
class CKDSettings(FeatureSettings):
    """CKD's layer grouping."""

    ckd_grouping: str = setting("sc", "ckd: layer grouping", choices=CKD_GROUPINGS)


def _sizes(n_student: int, n_teacher: int) -> list[int]:
    """Group sizes of ``sc``/``rc``: N_T split into N_S near-equal parts, the larger ones first."""
    base, extra = divmod(n_teacher, n_student)
    return [base + (1 if i < extra else 0) for i in range(n_student)]


def _cut(layers: list[int], sizes: list[int]) -> list[list[int]]:
    groups, start = [], 0
    for size in sizes:
        groups.append(layers[start:start + size])
        start += size
    return groups


def ckd_groups(n_student: int, n_teacher: int, grouping: str, seed: int = 0) -> list[list[int]]:
    """CKD's teacher-layer groups: element ``i`` lists the (1-based) teacher layers fused for student
    layer ``i + 1``. See the module docstring for the definitions and the 6 -> 3 / 4 -> 2 tables."""
    if grouping not in CKD_GROUPINGS:
        raise UserError(f"ckd_grouping={grouping!r}: must be one of {', '.join(CKD_GROUPINGS)}")
    if n_student < 1 or n_teacher < n_student:
        raise UserError(f"ckd needs at least as many teacher layers as student layers "
                        f"(student {n_student}, teacher {n_teacher})")
    layers = list(range(1, n_teacher + 1))
    if grouping == "sc":
        return _cut(layers, _sizes(n_student, n_teacher))
    if grouping == "cc":
        return [[j for j in layers if (j - 1) % n_student == i] for i in range(n_student)]
    if grouping == "rc":
        fixed = [{frozenset(g) for g in ckd_groups(n_student, n_teacher, other)} for other in ("sc", "cc")]
        rng, groups = random.Random(seed), []
        for _ in range(100):  # redraw while the partition is sc's or cc's (when another exists)
            rng.shuffle(layers)
            groups = [sorted(g) for g in _cut(layers, _sizes(n_student, n_teacher))]
            if {frozenset(g) for g in groups} not in fixed:
                break
        return groups
    # oc: evenly spread windows of ceil(N_T / N_S) + 1 consecutive layers (round half up)
    size = min(-(-n_teacher // n_student) + 1, n_teacher)
    if n_student == 1:
        return [layers]
    span = n_teacher - size
    starts = [1 + (2 * i * span + (n_student - 1)) // (2 * (n_student - 1)) for i in range(n_student)]
    return [list(range(s, s + size)) for s in starts]


class CombinatorialKD(HiddenStateKD):
    """CKD. Terms: ``ckd`` (L_CKD, summed over the student encoder layers), ``kd`` (word-level KD).
    Trainable parts: ``fuse`` (one ``Linear(|C(i)| * d_T, d_S)`` per student layer)."""

    name = "ckd"
    label = "CKD"
    summary = "Combinatorial KD: fused groups of teacher encoder layers (ckd_grouping sc/cc/rc/oc), MSE + word KD"
    paper = ("Wu et al. 2020, Why Skip If You Can Combine: A Simple Knowledge Distillation Technique "
             "for Intermediate Layers")
    term = "ckd"
    rc_seed = 0
    Settings = CKDSettings

    def __init__(self, settings: CKDSettings, student_config: MarianConfig, teacher_config: MarianConfig | None):
        super().__init__(settings, student_config, teacher_config)
        self.grouping = self.settings.ckd_grouping
        self.groups = ckd_groups(int(student_config.encoder_layers), int(teacher_config.encoder_layers),
                                 self.grouping, seed=self.rc_seed)
        d_s, d_t = int(student_config.d_model), int(teacher_config.d_model)
        self.fuse = nn.ModuleList(nn.Linear(len(g) * d_t, d_s) for g in self.groups)

    def fused_teacher(self, t_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> list[torch.Tensor]:
        """``f^T_i`` of every student layer, ``(N, d_S)`` over the N real tokens."""
        fused = []
        for group, proj in zip(self.groups, self.fuse):
            concat = torch.cat([real_tokens(t_states[j].detach(), mask) for j in group], dim=-1)  # (N, |C|*d_T)
            fused.append(proj(concat))
        return fused

    def feature_loss(self, s_states, t_states, mask: torch.Tensor) -> torch.Tensor:
        """L_CKD, summed over the student layers."""
        fused = self.fused_teacher(t_states, mask)
        return sum(token_mse(real_tokens(s_states[i], mask), f) for i, f in enumerate(fused, start=1))

    def describe(self) -> dict:
        return {"method": self.name, "side": self.side, "ckd_grouping": self.grouping,
                "groups": [list(g) for g in self.groups]}


__all__ = ["CombinatorialKD", "CKDSettings", "ckd_groups", "CKD_GROUPINGS"]
