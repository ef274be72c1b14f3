"""``minilm``: MiniLM's deep self-attention distillation (Wang et al. 2020), the last layer's attention
distributions and value relations by KL + CE + word KD.

MiniLM distils only the last Transformer layer (teacher layer L, student layer M), so no layer map
is needed:

    L_AT = 1/(A_h |x|) sum_a sum_t KL(A^T_{L,a,t} || A^S_{M,a,t})               (attention transfer)
    VR_a = softmax(V_a V_a^T / sqrt(d_k))                                         (value relation)
    L_VR = 1/(A_h |x|) sum_a sum_t KL(VR^T_{L,a,t} || VR^S_{M,a,t})              (value-relation transfer)
    L    = L_AT + L_VR

with ``a`` the heads, ``t`` the query positions, ``V_a`` the values of head ``a`` ``(|x|, d_k)``. The
A2D paper "augment[s] the MiniLM objective with L_CE and L_KD for a fair comparison":

    L = L_CE + feature_weight * (L_AT + L_VR) + mu_kd * L_KD      (L_KD: word-level KD, Hinton)

Adaptation to translation: both self-attentions are distilled, the last encoder layer's
(``enc_self``, source tokens) and the last decoder layer's (``dec_self``, target tokens, causal):
``L_AT = L_AT-enc + L_AT-dec`` and likewise ``L_VR``. Cross-attention is not (MiniLM has none). Each
query row is a distribution over its valid keys: padding keys are excluded and, in the decoder,
future keys too (the value relations use the same causal mask as the decoder's attention); padded
query rows never count; ``1/(A_h |x|)`` becomes "mean over heads, mean over the real query tokens
of the batch" (:func:`a2d.losses.attention_kl_per_query` divided by the heads).

Heads: MiniLM (v1) compares the teacher's and the student's heads one to one, so it needs equal head
counts (the relation-head trick that lifts this is MiniLMv2's, not implemented here): unequal ones
are a one-line :class:`~a2d.utils.UserError`. The widths may differ (relations are ``|x| x |x|``).

Values: Hugging Face attention modules do not return them, so they are recomputed as
``v = last_layer.self_attn.v_proj(h)`` from ``h = hidden_states[-2]`` of the stack (the exact input of
the last layer), with the models' own ``v_proj`` (gradients reach the student's). The method
therefore needs references to the two models: call :meth:`MiniLM.attach` once (with the same model
objects that run the forward passes; a DDP wrapper is unwrapped) before the first
:meth:`~MiniLM.loss_terms`. It registers no hooks and holds no parameters of its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from a2d.attention import stack_attention
from a2d.losses import attention_kl_per_query, word_kd
from a2d.methods.base import ATTENTIONS, HIDDEN_STATES, KD_TERM, LOGITS, DistillMethod, Progress
from a2d.families import FAMILIES, SELF_KIND
from a2d.methods.features import FeatureSettings, check_equal_heads, hidden_states, token_masks

# The Hugging Face attention field of each stack.
_SIDE_FIELD = {"encoder": "encoder_attentions", "decoder": "decoder_attentions"}
_NOT_ATTACHED = ("minilm: call method.attach(student, teacher) before loss_terms (value relations are recomputed "
                 "with the models' last-layer v_proj)")


def value_relation(values: torch.Tensor, heads: int, key_mask: torch.Tensor) -> torch.Tensor:
    """``VR = softmax(V_a V_a^T / sqrt(d_k))`` per head over the allowed keys.

    Args:
        values: ``(B, L, d)`` the value vectors of one attention layer (all heads concatenated).
        heads: A_h; ``d_k = d / heads``.
        key_mask: bool broadcastable to ``(B, L, L)``, True where query row may look at key column.

    Returns:
        ``(B, A_h, L, L)`` fp32, each row a distribution over its allowed keys (0 elsewhere).
    """
    b, length, d = values.shape
    d_k = d // heads
    v = values.float().reshape(b, length, heads, d_k).transpose(1, 2)  # (B, A_h, L, d_k)
    scores = v @ v.transpose(-1, -2) / d_k ** 0.5  # (B, A_h, L, L)
    allowed = key_mask.bool().expand(b, length, length)[:, None]
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1) * allowed


class MiniLM(DistillMethod):
    """MiniLM. Terms: ``at`` (L_AT), ``vr`` (L_VR), ``at_<side>`` / ``vr_<side>`` (logging only, weight 0),
    ``kd`` (word-level KD). No trainable parts; needs :meth:`attach` before use."""

    name = "minilm"
    label = "MiniLM"
    summary = "MiniLM: last-layer self-attention distributions and value relations (KL, enc+dec) + word KD"
    paper = ("Wang et al. 2020, MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression "
             "of Pre-Trained Transformers")
    needs = frozenset({LOGITS, ATTENTIONS, HIDDEN_STATES})
    Settings = FeatureSettings
    families = None  # the self-attention stacks the model has (a BERT classifier: its encoder)

    def __init__(self, settings: FeatureSettings, student_config, teacher_config):
        super().__init__(settings, student_config, teacher_config)
        check_equal_heads(self.name, self.student_shape, self.teacher_shape)
        self.sides = self.student_shape.sides
        self.heads = {side: int(getattr(self.student_shape, f"{side}_attention_heads")) for side in self.sides}
        self._value_proj: dict[str, dict[str, nn.Linear]] | None = None  # plain dict: not submodules

    def attach(self, student, teacher) -> None:
        """Keep references to both models' last-layer ``v_proj`` (per stack), for the value relations.

        Stored in a plain dict, so they are neither parameters of the method (the optimizer and the
        saved method state never see them twice) nor moved by ``method.to``.
        """
        family = FAMILIES[self.student_shape.family]
        self._value_proj = {role: {side: family.value_projection(model, side) for side in self.sides}
                            for role, model in (("student", student), ("teacher", teacher))}

    def _values(self, role: str, side: str, output, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` values of the last layer, recomputed from its input ``hidden_states[-2]``."""
        proj = self._value_proj[role][side]
        h = hidden_states(output, side)[-2]
        h = torch.where(mask[:, :, None], h.float(), torch.zeros((), dtype=torch.float32, device=h.device))
        return F.linear(h, proj.weight.float(), None if proj.bias is None else proj.bias.float())

    def _maps(self, output, batch, side: str):
        """The last layer's self-attention maps of one stack, with their masks (an AttentionMaps)."""
        kind, field = SELF_KIND[side], _SIDE_FIELD[side]
        per_layer = getattr(output, field, None)
        if not per_layer:
            raise ValueError(f"the model output has no {field}: run the forward pass with output_attentions=True "
                             "and the eager attention kernel (models.use_attention_maps)")
        return stack_attention((per_layer[-1],), kind, batch)

    def value_relations(self, role: str, side: str, output, batch) -> torch.Tensor:
        """``VR`` ``(B, A_h, L, L)`` of the last layer of ``side`` for ``role`` ("student" or "teacher"):
        rows over the keys that layer's self-attention may use (padding and, in the decoder, future keys 0)."""
        if self._value_proj is None:
            raise RuntimeError(_NOT_ATTACHED)
        key_mask = self._maps(output, batch, side).key_mask
        values = self._values(role, side, output, token_masks(batch)[side])
        return value_relation(values, self.heads[side], key_mask)

    def side_losses(self, batch, student, teacher, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L_AT, L_VR)`` of one stack's last self-attention layer."""
        heads = self.heads[side]
        s_maps, t_maps = self._maps(student, batch, side), self._maps(teacher, batch, side)
        at = attention_kl_per_query(t_maps.maps.detach(), s_maps.maps, s_maps.query_mask, s_maps.key_mask) / heads
        s_vr = self.value_relations("student", side, student, batch)
        with torch.no_grad():
            t_vr = self.value_relations("teacher", side, teacher, batch)
        vr = attention_kl_per_query(t_vr, s_vr, s_maps.query_mask, s_maps.key_mask) / heads
        return at, vr

    def loss_terms(self, batch, student, teacher, progress: Progress) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError(f"method {self.name} needs the teacher's forward pass")
        if self._value_proj is None:
            raise RuntimeError(_NOT_ATTACHED)
        per_side = {side: self.side_losses(batch, student, teacher, side) for side in self.sides}
        terms = {"at": sum(at for at, _ in per_side.values()), "vr": sum(vr for _, vr in per_side.values())}
        for side, (at, vr) in per_side.items():
            terms[f"at_{side}"], terms[f"vr_{side}"] = at.detach(), vr.detach()
        terms[KD_TERM] = word_kd(student.logits, teacher.logits.detach(), batch["labels"], self.settings.kd_temperature)
        return terms

    def weights(self, progress: Progress) -> dict[str, float]:
        feature = float(self.settings.feature_weight)
        w = {"at": feature, "vr": feature, KD_TERM: float(self.settings.mu_kd)}
        for side in self.sides:
            w[f"at_{side}"] = w[f"vr_{side}"] = 0.0
        return w

    def describe(self) -> dict:
        return {"method": self.name, "kinds": [SELF_KIND[s] for s in self.sides], "layers": "last", "heads": dict(self.heads)}


__all__ = ["MiniLM", "value_relation"]
