"""The Attention Alignment Module (AAM, paper section 4.2.1, eq. 9) for one kind of attention.

``H^I_c = sum_{m,n} w_{(m,n),c} H^S_(m,n) + b_c`` for ``c = 1..C``: a pointwise (1x1) convolution over
the axis of the stacked student maps. It turns the ``n_student = N*M`` student maps of one kind
into ``n_teacher = C`` intermediate maps, one per teacher map, which the attention loss (eq. 10)
compares one-to-one with the teacher's. The AAM is trained jointly with the student and is thrown
away after training; its weights are the analysis object of Figure 2.

It is only ever applied to the *student's* maps. (The authors' code also built AAMs inside the
teacher, left them at random initial weights and applied them to the teacher's maps; see
REFERENCE.md. This module never does that.)
"""
from __future__ import annotations

import math

import torch
from torch import nn

from a2d.utils import UserError

AAM_MODES = ("convex", "linear")


def mixing_matrix(param: torch.Tensor, mode: str) -> torch.Tensor:
    """Effective mixing weights ``(n_student, n_teacher)`` from a stored AAM parameter.

    ``param`` is the module's ``weight`` (linear) or ``logits`` (convex), both stored
    ``(n_teacher, n_student)`` like a ``Conv2d`` weight without its 1x1 kernel. Column ``c`` of the
    result holds ``w_{(m,n),c}`` of eq. 9 over the student maps (layer-major ``n*M + m``); for
    ``convex`` each column is a softmax and sums to 1.
    """
    if mode not in AAM_MODES:
        raise UserError(f"aam={mode!r}: must be one of {', '.join(AAM_MODES)}")
    param = param.float()
    if param.dim() == 4:  # a Conv2d weight (n_teacher, n_student, 1, 1)
        param = param.flatten(1)
    w = torch.softmax(param, dim=-1) if mode == "convex" else param
    return w.transpose(0, 1)


class AttentionAlignment(nn.Module):
    """AAM for one kind: ``(B, n_student, Lq, Lk)`` student maps -> ``(B, n_teacher, Lq, Lk)`` intermediate maps.

    Modes:
        ``"linear"``: the paper's eq. 9 as written: free weights ``w[(m,n),c]`` and a bias ``b[c]``,
            exactly an ``nn.Conv2d(n_student, n_teacher, kernel_size=1)`` with its default
            initialisation (uniform in ``+-1/sqrt(n_student)`` for weights and bias). Intermediate
            maps are not distributions (negative cells, a bias on padded cells); a loss that wants
            per-row distributions has to clamp and renormalise them.
        ``"convex"``: ``w[:, c] = softmax(logits[c, :])`` over the student maps, no bias. Each
            intermediate map is a convex mixture of student maps, so every query row is a
            probability distribution whenever the student's rows are, and padded or causally
            masked keys (0 in every student map) stay exactly 0.

    Initialisation of ``convex``: zero logits, i.e. every intermediate map starts as the uniform
    average of all student maps. A small random init is not needed and not better: the symmetry
    that random init breaks in a hidden layer does not exist here, because every output ``c`` has
    its own target (teacher map ``c``), so the gradients of different columns differ from the first
    step (``d L / d logit_{c,j} = w_{j,c} (g_{j,c} - sum_k w_{k,c} g_{k,c})`` with ``g`` the
    gradient against teacher map ``c``) and the student maps themselves differ. The uniform start
    is the maximum-entropy, seed-independent choice that prefers no student head, and it keeps the
    Figure 2 analysis free of initialisation artefacts. ``init_std > 0`` adds Gaussian noise to the
    logits for experiments.

    Args:
        n_student: student maps of this kind (layers x heads, or layers for layer-wise A2D).
        n_teacher: C, teacher maps of this kind.
        mode: ``"convex"`` or ``"linear"``.
        init_std: std of the random part of the convex logits (default 0: uniform mixture).

    Parameters (in ``state_dict``): ``linear``: ``weight`` ``(n_teacher, n_student)`` and ``bias``
    ``(n_teacher,)``; ``convex``: ``logits`` ``(n_teacher, n_student)``.
    """

    def __init__(self, n_student: int, n_teacher: int, mode: str = "convex", init_std: float = 0.0):
        super().__init__()
        if mode not in AAM_MODES:
            raise UserError(f"aam={mode!r}: must be one of {', '.join(AAM_MODES)}")
        if n_student < 1 or n_teacher < 1:
            raise ValueError(f"AttentionAlignment needs n_student, n_teacher >= 1 (got {n_student}, {n_teacher})")
        self.n_student, self.n_teacher, self.mode = int(n_student), int(n_teacher), mode
        if mode == "linear":
            self.weight = nn.Parameter(torch.empty(self.n_teacher, self.n_student))
            self.bias = nn.Parameter(torch.empty(self.n_teacher))
            # nn.Conv2d's default (kaiming_uniform with a=sqrt(5)), fan_in = n_student
            bound = 1.0 / math.sqrt(self.n_student)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.logits = nn.Parameter(torch.zeros(self.n_teacher, self.n_student))
            if init_std > 0:
                with torch.no_grad():
                    self.logits.normal_(0.0, init_std)

    def extra_repr(self) -> str:
        return f"n_student={self.n_student}, n_teacher={self.n_teacher}, mode={self.mode}"

    def weight_matrix(self) -> torch.Tensor:
        """Effective ``w`` of eq. 9, ``(n_student, n_teacher)`` (softmaxed over student maps for convex)."""
        return mixing_matrix(self.weight if self.mode == "linear" else self.logits, self.mode)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Eq. 9. ``maps`` ``(B, n_student, Lq, Lk)`` -> ``(B, n_teacher, Lq, Lk)``, computed in fp32."""
        if maps.dim() != 4 or maps.shape[1] != self.n_student:
            raise ValueError(f"AttentionAlignment expects (B, {self.n_student}, Lq, Lk) maps, got {tuple(maps.shape)}")
        with torch.autocast(device_type=maps.device.type, enabled=False):
            w = self.weight_matrix().to(maps.device)  # (n_student, n_teacher), fp32
            out = torch.einsum("bsqk,st->btqk", maps.float(), w)
            if self.mode == "linear":
                out = out + self.bias.float()[None, :, None, None]
        return out


__all__ = ["AttentionAlignment", "AAM_MODES", "mixing_matrix"]
