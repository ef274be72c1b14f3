"""``tinybert``: TinyBERT's Transformer-layer distillation (Jiao et al. 2020): attention and hidden
states of mapped layers by MSE + word KD.

TinyBERT maps student layer ``m`` to teacher layer ``g(m) = m * N / M``
(uniform strategy) and distils, per mapped pair,

    L_attn = 1/h sum_{i=1}^{h} MSE(A^S_i, A^T_i)          (eq. 7, A = attention *scores*, pre-softmax)
    L_hidn = MSE(H^S W_h, H^T)                            (eq. 8, W_h a learned d_S x d_T projection)
    L_embd = MSE(E^S W_e, E^T)                            (eq. 9, the embedding layer, 0 <- 0)

plus the prediction layer (soft cross-entropy), which here is the word-level KD term.

Adaptation to translation (the A2D paper: "every other layer of the teacher model is correspondingly
mapped to a layer in the student model"):

* Layer map (:func:`tinybert_layer_map`, 1-based): student layer ``i`` <- teacher layer
  ``ceil(i * N_T / N_S)``; 6 -> 3 gives ``[(1, 2), (2, 4), (3, 6)]``, 4 -> 2 ``[(1, 2), (2, 4)]``. The
  encoder map serves ``enc_self`` attention and encoder hidden states, the decoder map ``dec_self``,
  ``dec_cross`` and decoder hidden states; hidden states also match the embeddings (``0 <- 0``).
* Scores: Hugging Face returns attention *probabilities* only, so the log-probabilities
  ``log(max(p, 1e-6))`` of the valid keys stand in for the scores (a log-probability is the score
  minus its row's log-sum-exp: the same differences between keys, a fixed offset per row). Per map,
  the squared differences are averaged over the valid keys of each valid query row (padding and,
  for ``dec_self``, future keys excluded), over the heads, then over the real query tokens of the
  batch; summed over the mapped layers. The kinds are mixed as A2D's eq. 11:
  ``L_att = L_enc-self + (L_dec-self + L_dec-cross) / 2``.
* Hidden states: per-token MSE (mean over features) averaged over the real tokens, summed over
  the mapped layers, ``L_hid = L_hid-enc + L_hid-dec``. Projections (owned by the method, trained with
  the student): ``proj.emb`` (W_e, both sides' embeddings: the embedding table is shared),
  ``proj.encoder`` and ``proj.decoder`` (W_h per stack), each ``Linear(d_S, d_T)``, identity-initialised
  when the widths are equal.
* ``L = L_CE + feature_weight * (L_att + L_hid) + mu_kd * L_KD``; teacher outputs are detached.

Like the original, attention MSE needs equal head counts in student and teacher: unequal ones are a
:class:`~a2d.utils.UserError`.
"""
from __future__ import annotations

import torch
from torch import nn

from a2d.attention import stack_attention
from a2d.losses import kind_weights, word_kd
from a2d.methods.base import ATTENTIONS, HIDDEN_STATES, KD_TERM, LOGITS, DistillMethod, Progress
from a2d.methods.features import (FeatureSettings, check_equal_heads, hidden_states, projection, real_tokens, token_masks,
                                  token_mse, uniform_layer_map)

# Which stack's layer map serves each attention kind, and the Hugging Face output field.
_KIND_SIDE = {"enc_self": "encoder", "dec_self": "decoder", "dec_cross": "decoder"}
_KIND_FIELD = {"enc_self": "encoder_attentions", "dec_self": "decoder_attentions", "dec_cross": "cross_attentions"}


def tinybert_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """``[(i, ceil(i * N_T / N_S)) for i = 1..N_S]`` (1-based): 6 -> 3 ``[(1, 2), (2, 4), (3, 6)]``."""
    return uniform_layer_map(n_student, n_teacher)


def attention_score_mse(student: torch.Tensor, teacher: torch.Tensor, query_mask: torch.Tensor,
                        key_mask: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Eq. 7 with log-probabilities as the scores, for the maps of one layer pair.

    Args:
        student, teacher: ``(B, H, Lq, Lk)`` attention probabilities (same heads).
        query_mask: ``(B, Lq)`` bool, real query positions.
        key_mask: bool broadcastable to ``(B, Lq, Lk)``, True where a query may attend.
        floor: probabilities are clamped at ``floor`` before the log.

    Returns:
        ``sum_{b, real q} mean_h mean_{valid k} (log p^S - log p^T)^2 / #real queries`` (fp32, 0-dim).
        Invalid cells never enter, whatever they hold.
    """
    b, _, lq, lk = student.shape
    valid = (query_mask.bool()[:, :, None] & key_mask.bool()).expand(b, lq, lk)  # (B, Lq, Lk)
    one = torch.ones((), dtype=torch.float32, device=student.device)
    s = torch.log(torch.where(valid[:, None], student.float(), one).clamp(min=floor))  # 0 at invalid cells
    t = torch.log(torch.where(valid[:, None], teacher.float(), one).clamp(min=floor))
    per_row = (s - t).pow(2).sum(-1) / valid.sum(-1).clamp(min=1)[:, None]  # (B, H, Lq)
    return per_row.mean(1).sum() / query_mask.bool().sum().clamp(min=1)


class TinyBERT(DistillMethod):
    """TinyBERT. Terms: ``att`` (L_att), ``hid`` (L_hid incl. embeddings), ``att_<kind>`` / ``hid_<side>``
    (logging only, weight 0), ``kd`` (word-level KD). Trainable parts: ``proj`` (``emb``, ``encoder``, ``decoder``)."""

    name = "tinybert"
    label = "TinyBERT"
    summary = "TinyBERT: attention (log-prob MSE) and hidden states of every other teacher layer + word KD"
    paper = "Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding"
    needs = frozenset({LOGITS, ATTENTIONS, HIDDEN_STATES})
    log_floor = 1e-6
    Settings = FeatureSettings
    families = None  # the stacks and kinds the model has (a BERT classifier: its encoder)

    def __init__(self, settings: FeatureSettings, student_config, teacher_config):
        super().__init__(settings, student_config, teacher_config)
        student, teacher = self.student_shape, self.teacher_shape
        check_equal_heads(self.name, student, teacher)
        self.sides = student.sides
        self.layer_maps = {side: tinybert_layer_map(int(getattr(student, f"{side}_layers")),
                                                    int(getattr(teacher, f"{side}_layers")))
                           for side in self.sides}
        # eq. 11 of the A2D paper; a model with one kind: its loss
        self.kind_weights = kind_weights("all") if len(student.kinds) > 1 else {student.kinds[0]: 1.0}
        d_s, d_t = student.d_model, teacher.d_model
        self.proj = nn.ModuleDict({key: projection(d_s, d_t) for key in ("emb", *self.sides)})

    def attention_losses(self, batch, student, teacher) -> dict[str, torch.Tensor]:
        """``{kind: L_attn summed over the mapped layers}`` for enc_self, dec_self, dec_cross."""
        losses = {}
        for kind in self.kind_weights:
            side = _KIND_SIDE[kind]
            pairs = self.layer_maps[side]
            s_all, t_all = getattr(student, _KIND_FIELD[kind], None), getattr(teacher, _KIND_FIELD[kind], None)
            if not s_all or not t_all:
                raise ValueError(f"the model output has no {_KIND_FIELD[kind]}: run the forward pass with "
                                 "output_attentions=True and the eager attention kernel (models.use_attention_maps)")
            # only the mapped layers, stacked with their masks
            s_maps = stack_attention(tuple(s_all[i - 1] for i, _ in pairs), kind, batch)
            t_maps = stack_attention(tuple(t_all[j - 1].detach() for _, j in pairs), kind, batch)
            b, _, lq, lk = s_maps.maps.shape
            s = s_maps.maps.reshape(b, len(pairs), s_maps.heads, lq, lk)
            t = t_maps.maps.reshape(b, len(pairs), t_maps.heads, lq, lk)
            losses[kind] = sum(attention_score_mse(s[:, n], t[:, n], s_maps.query_mask, s_maps.key_mask,
                                                   self.log_floor) for n in range(len(pairs)))
        return losses

    def hidden_losses(self, batch, student, teacher) -> dict[str, torch.Tensor]:
        """``{side: L_embd + L_hidn summed over the mapped layers}`` for encoder, decoder."""
        masks, losses = token_masks(batch), {}
        for side in self.sides:
            s_states, t_states = hidden_states(student, side), hidden_states(teacher, side)
            loss = None
            for i, j in [(0, 0), *self.layer_maps[side]]:
                proj = self.proj["emb" if i == 0 else side]
                s = proj(real_tokens(s_states[i], masks[side]))  # (N, d_T)
                term = token_mse(s, real_tokens(t_states[j].detach(), masks[side]))
                loss = term if loss is None else loss + term
            losses[side] = loss
        return losses

    def loss_terms(self, batch, student, teacher, progress: Progress) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError(f"method {self.name} needs the teacher's forward pass")
        att = self.attention_losses(batch, student, teacher)
        hid = self.hidden_losses(batch, student, teacher)
        terms = {"att": sum(self.kind_weights[k] * v for k, v in att.items()), "hid": sum(hid.values())}
        terms.update({f"att_{k}": v.detach() for k, v in att.items()})
        terms.update({f"hid_{side}": v.detach() for side, v in hid.items()})
        terms[KD_TERM] = word_kd(student.logits, teacher.logits.detach(), batch["labels"], self.settings.kd_temperature)
        return terms

    def weights(self, progress: Progress) -> dict[str, float]:
        feature = float(self.settings.feature_weight)
        w = {"att": feature, "hid": feature, KD_TERM: float(self.settings.mu_kd)}
        w.update({f"att_{k}": 0.0 for k in self.kind_weights})
        w.update({f"hid_{side}": 0.0 for side in self.sides})
        return w

    def describe(self) -> dict:
        return {"method": self.name, "score_proxy": f"log(max(p, {self.log_floor}))",
                "layer_map": {side: [list(p) for p in pairs] for side, pairs in self.layer_maps.items()},
                "hidden_map": {side: [[0, 0], *[list(p) for p in pairs]] for side, pairs in self.layer_maps.items()}}


__all__ = ["TinyBERT", "tinybert_layer_map", "attention_score_mse", "check_equal_heads"]
