"""``pkd``: Patient Knowledge Distillation (Sun et al. 2019), normalised hidden-state matching + word KD.

The original (BERT) distils the [CLS] vector of the ``N_S - 1`` intermediate student layers from
chosen teacher layers, each vector L2-normalised (Sun et al.'s L_PT and total loss):

    L_PT = sum_{i=1}^{N_S-1} || h^S_i / ||h^S_i||_2  -  h^T_{I(i)} / ||h^T_{I(i)}||_2 ||_2^2
    L    = (1 - alpha) L_CE + alpha L_DS + beta L_PT

with the teacher layers ``I`` given by the strategy (:func:`pkd_layer_map`, 1-based, student layer
``i = 1..N_S-1``; the top student layer is left to the prediction loss, as in the paper):

* ``skip`` (PKD-Skip): every k-th teacher layer, ``I(i) = ceil(i * N_T / N_S)``
  (12 -> 6: 2, 4, 6, 8, 10; 6 -> 3: 2, 4; 4 -> 2: 2);
* ``last`` (PKD-Last): the last teacher layers below the top, ``I(i) = N_T - N_S + i``
  (12 -> 6: 7..11; 6 -> 3: 4, 5; 4 -> 2: 3).

Adaptation to translation (as the A2D paper compares against it, Table 2): there is no [CLS], so
every real source token is a "patient" vector; the loss is applied on the encoder side (the
original is an encoder), averaged over the real source tokens of the batch, summed over the mapped
layers; ``L = L_CE + feature_weight * L_PT + mu_kd * L_KD`` (word-level KD, Hinton). When the
student and teacher widths differ, a learned ``Linear(d_S, d_T)`` (shared across layers, owned by
the method) maps the student vectors before normalisation. The mapping is the setting ``pkd_mapping``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from a2d.config import setting
from a2d.methods.features import FeatureSettings, HiddenStateKD, projection, real_tokens, uniform_layer_map
from a2d.utils import UserError

PKD_MAPPINGS = ("skip", "last")


@dataclass
class PKDSettings(FeatureSettings):
    """PKD's layer mapping."""

    pkd_mapping: str = setting("skip", "pkd: skip or last-k teacher layers", choices=PKD_MAPPINGS)


def pkd_layer_map(n_student: int, n_teacher: int, mapping: str) -> list[tuple[int, int]]:
    """PKD's intermediate-layer map ``[(student layer, teacher layer), ...]``, 1-based, student
    layers ``1..N_S-1`` (empty for a 1-layer student).

    * ``skip``: ``(i, ceil(i * N_T / N_S))``, e.g. 6 -> 3: ``[(1, 2), (2, 4)]``; 12 -> 6: teacher 2, 4, 6, 8, 10.
    * ``last``: ``(i, N_T - N_S + i)``, e.g. 6 -> 3: ``[(1, 4), (2, 5)]``; 12 -> 6: teacher 7..11.
    """
    if mapping not in PKD_MAPPINGS:
        raise UserError(f"pkd_mapping={mapping!r}: must be one of {', '.join(PKD_MAPPINGS)}")
    if n_teacher < n_student:
        raise UserError(f"pkd needs at least as many teacher layers as student layers "
                        f"(student {n_student}, teacher {n_teacher})")
    if mapping == "skip":
        return uniform_layer_map(n_student, n_teacher)[:-1]
    return [(i, n_teacher - n_student + i) for i in range(1, n_student)]


def normalised_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_PT for one layer pair: ``|| s/||s|| - t/||t|| ||^2`` per token (in [0, 4]), mean over the tokens.

    student, teacher ``(N, d)``: the real tokens (:func:`real_tokens`). fp32, 0-dim.
    """
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.float(), dim=-1)
    return (s - t).pow(2).sum(-1).sum() / max(s.shape[0], 1)


class PatientKD(HiddenStateKD):
    """PKD. Terms: ``pt`` (L_PT, summed over the mapped encoder layers), ``kd`` (word-level KD).
    Trainable parts: ``proj`` (``Linear(d_S, d_T)`` when the widths differ, else none)."""

    name = "pkd"
    label = "PKD"
    summary = "Patient KD: normalised encoder hidden states of skip/last-k teacher layers (pkd_mapping) + word KD"
    paper = "Sun et al. 2019, Patient Knowledge Distillation for BERT Model Compression"
    term = "pt"
    Settings = PKDSettings

    families = ("marian", "bert")  # the encoder's hidden states

    def __init__(self, settings: PKDSettings, student_config, teacher_config):
        super().__init__(settings, student_config, teacher_config)
        student, teacher = self.student_shape, self.teacher_shape
        self.mapping = self.settings.pkd_mapping
        self.layer_map = pkd_layer_map(student.encoder_layers, teacher.encoder_layers, self.mapping)
        self.proj = projection(student.d_model, teacher.d_model, identity_if_equal=False)

    def feature_loss(self, s_states, t_states, mask: torch.Tensor) -> torch.Tensor:
        """L_PT, summed over the mapped layers."""
        pt = s_states[0].new_zeros((), dtype=torch.float32)
        for i, j in self.layer_map:
            s_tokens = self.proj(real_tokens(s_states[i], mask))  # (N, d_T)
            pt = pt + normalised_distance(s_tokens, real_tokens(t_states[j].detach(), mask))
        return pt

    def describe(self) -> dict:
        return {"method": self.name, "side": self.side, "pkd_mapping": self.mapping,
                "layer_map": [list(p) for p in self.layer_map]}


__all__ = ["PatientKD", "PKDSettings", "pkd_layer_map", "PKD_MAPPINGS", "normalised_distance"]
