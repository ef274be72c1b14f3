"""``alp-kd``: Attention-based Layer Projection KD (Passban et al. 2021), each student layer attends
over all teacher layers' hidden states + word KD.

Passban et al. fuse the teacher layers per student layer with attention weights given by dot
products, and match the fusion with the student layer by MSE:

    alpha_{j,k} = exp(h^S_j . h^T_k) / sum_{k'} exp(h^S_j . h^T_{k'})        k = 1..N_T
    f^T_j       = sum_k alpha_{j,k} h^T_k
    L_ALP       = sum_{j=1}^{N_S} MSE(h^S_j, f^T_j)
    L           = L_CE + feature_weight * L_ALP + mu_kd * L_KD            (L_KD: word-level KD, Hinton)

ALP-KD may restrict a student layer to a bucket of teacher layers; the A2D paper trains its ALP-KD
baseline "with an attention mask spanned over all teacher layers", which is what this does:
every student layer ``j = 1..N_S`` attends over all teacher layers ``k = 1..N_T`` (embeddings
excluded). Adaptation to translation: there is no [CLS], so the attention and the MSE are per token
(``alpha`` is computed for each real token separately, from that token's vectors); both the encoder
(source tokens) and the decoder (target tokens) are distilled, ``L_ALP = L_enc + L_dec`` (ALP-KD's
weights are learned per token, so the decoder needs no hand-made layer map; a subclass may set
``sides = ("encoder",)``). The dot product is unscaled, as in the paper (with LayerNorm'd outputs of
width d it is O(d), so ``alpha`` is nearly one-hot: each token follows its most similar teacher layer).
The MSE is the per-token mean over features, averaged over the real tokens of the batch, summed
over student layers. When the widths differ a learned ``Linear(d_S, d_T)`` per side (owned by the
method) maps the student vectors first (scores and MSE are taken in the teacher's space); with
equal widths there is no projection. Teacher states are detached.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import MarianConfig

from a2d.losses import word_kd
from a2d.methods.base import HIDDEN_STATES, KD_TERM, LOGITS, DistillMethod, Progress
from a2d.methods.features import (SIDES, FeatureSettings, hidden_states, projection, real_tokens, token_masks,
                                  token_mse)


def alp_fuse(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over teacher layers for one student layer.

    Args:
        student: ``(N, d)`` the student layer's vectors of N tokens (already in the teacher's width).
        teacher: ``(K, N, d)`` the same tokens' vectors in the K teacher layers.

    Returns:
        ``fused`` ``(N, d)`` = ``sum_k alpha[:, k] * teacher[k]`` and ``alpha`` ``(N, K)``, each row a
        softmax over the teacher layers (sums to 1). fp32.
    """
    s, t = student.float(), teacher.float()
    scores = torch.einsum("nd,knd->nk", s, t)  # (N, K)
    alpha = torch.softmax(scores, dim=-1)
    fused = torch.einsum("nk,knd->nd", alpha, t)
    return fused, alpha


class ALPKD(DistillMethod):
    """ALP-KD. Terms: ``alp`` (L_ALP over ``sides``), ``alp_<side>`` (per side, logging only, weight 0),
    ``kd`` (word-level KD). Trainable parts: ``proj`` (per side ``Linear(d_S, d_T)`` when widths differ)."""

    name = "alp-kd"
    label = "ALP-KD"
    summary = "ALP-KD: each student layer attends over all teacher layers' hidden states (enc+dec), MSE + word KD"
    paper = "Passban et al. 2021, ALP-KD: Attention-Based Layer Projection for Knowledge Distillation"
    needs = frozenset({LOGITS, HIDDEN_STATES})
    sides: tuple[str, ...] = SIDES
    Settings = FeatureSettings

    def __init__(self, settings: FeatureSettings, student_config: MarianConfig, teacher_config: MarianConfig | None):
        super().__init__(settings, student_config, teacher_config)
        d_s, d_t = int(student_config.d_model), int(teacher_config.d_model)
        self.proj = nn.ModuleDict({side: projection(d_s, d_t, identity_if_equal=False) for side in self.sides})
        self.layers = {side: (int(getattr(student_config, f"{side}_layers")),
                              int(getattr(teacher_config, f"{side}_layers"))) for side in self.sides}

    def _side(self, side: str, mask: torch.Tensor, student, teacher) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(L_ALP of this side, [alpha (N, N_T) per student layer])``."""
        s_states, t_states = hidden_states(student, side), hidden_states(teacher, side)
        t_stack = torch.stack([real_tokens(h.detach(), mask) for h in t_states[1:]])  # (N_T, N, d_T)
        loss, alphas = t_stack.new_zeros(()), []
        for j in range(1, len(s_states)):
            s = self.proj[side](real_tokens(s_states[j], mask))  # (N, d_T)
            fused, alpha = alp_fuse(s, t_stack)
            loss = loss + token_mse(s, fused)
            alphas.append(alpha)
        return loss, alphas

    def loss_terms(self, batch, student, teacher, progress: Progress) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError(f"method {self.name} needs the teacher's forward pass")
        masks = token_masks(batch)
        per_side = {side: self._side(side, masks[side], student, teacher)[0] for side in self.sides}
        terms = {"alp": sum(per_side.values())}
        for side, value in per_side.items():
            terms[f"alp_{side}"] = value.detach()
        terms[KD_TERM] = word_kd(student.logits, teacher.logits.detach(), batch["labels"], self.settings.kd_temperature)
        return terms

    def weights(self, progress: Progress) -> dict[str, float]:
        w = {"alp": float(self.settings.feature_weight), KD_TERM: float(self.settings.mu_kd)}
        for side in self.sides:
            w[f"alp_{side}"] = 0.0
        return w

    @torch.no_grad()
    def layer_attention(self, batch, student, teacher) -> dict[str, torch.Tensor]:
        """``{side: alpha (N_S, N, N_T)}``: each student layer's weights over the teacher layers, per real token."""
        masks = token_masks(batch)
        return {side: torch.stack(self._side(side, masks[side], student, teacher)[1]) for side in self.sides}

    def describe(self) -> dict:
        return {"method": self.name, "sides": list(self.sides),
                "layers": {side: {"student": s, "teacher": t} for side, (s, t) in self.layers.items()}}


__all__ = ["ALPKD", "alp_fuse"]
