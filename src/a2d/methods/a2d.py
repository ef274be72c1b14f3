"""``a2d``: Align-to-Distill (Jin et al. 2024), attention-map transfer through trainable AAMs.

Per attention kind k in ``enc_self``, ``dec_self``, ``dec_cross`` (eq. 6-8) the student's maps
``(B, N_S*M_S, Lq, Lk)`` go through an :class:`~a2d.alignment.AttentionAlignment` (AAM, eq. 9) to
``C = N_T*M_T`` intermediate maps, compared one-to-one with the teacher's maps (eq. 10):

    L_att = L_enc-self + (L_dec-self + L_dec-cross) / 2            (eq. 11; Table 5 variants by att_kinds)
    L     = L_CE + lambda * L_att + mu_kd * L_KD                   (eq. 12)

with ``lambda = lambda_att * lambda_decay^(epoch-1)`` (or per update, ``lambda_decay_unit``). The
AAMs are trained with the student and never applied to the teacher's maps. ``kl_norm`` picks the
per-query masked KL (default) or the authors' whole-map arithmetic; ``aam`` picks convex or linear
AAM weights; ``att_granularity=layer`` (or method ``a2d-layerwise``) is Table 4's layer-wise A2D.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from a2d.alignment import AAM_MODES, AttentionAlignment
from a2d.attention import GRANULARITIES, KINDS, TEACHER_MAPS, cached_attention, collect_attention
from a2d.config import setting
from a2d.families import check_kinds
from a2d.losses import (ATT_KINDS, DECAY_UNITS, KL_NORMS, attention_kl_per_query, attention_kl_reference,
                        kd_loss, kind_weights, lambda_schedule)
from a2d.methods.base import ATTENTIONS, KD_TERM, LOGITS, DistillMethod, Progress
from a2d.methods.kd import WordKDSettings
from a2d.utils import UserError

@dataclass
class A2DSettings(WordKDSettings):
    """A2D's attention transfer."""

    lambda_att: float = setting(0.1, "initial weight of the attention loss (lambda; the paper presets set 1.0)",
                                low=0.0)
    lambda_decay: float = setting(0.9, "lambda = lambda_att * decay^(epoch-1) (or per update)", low=0.0, high=1.0)
    lambda_decay_unit: str = setting("epoch", "decay lambda per epoch or per update", choices=DECAY_UNITS)
    att_kinds: str = setting("all", "attention kinds that take part (Table 5)", choices=ATT_KINDS)
    att_granularity: str = setting("head", "head-wise maps (A2D) or per-layer averaged maps (Table 4)",
                                   choices=GRANULARITIES)
    kl_norm: str = setting("per-query", "how the attention KL is normalised: per-query distributions with padding "
                           "masked and a per-token scale, or the authors' reference arithmetic", choices=KL_NORMS)
    aam: str = setting("convex", "AAM weights: convex (softmax-normalised, each intermediate map a mixture of "
                       "student maps) or linear (free weights and bias, the paper's 1x1 convolution)",
                       choices=AAM_MODES)


class AlignToDistill(DistillMethod):
    """A2D. Terms: ``att`` (L_att, eq. 11), ``att_<kind>`` (per-kind losses, logging only, weight 0),
    ``kd`` (word-level KD). Trainable parts: ``aam`` (an ``nn.ModuleDict`` kind -> AttentionAlignment)."""

    name = "a2d"
    label = "A2D"
    alignment = True
    summary = "Align-to-Distill: head-wise attention transfer through trainable alignment modules (AAM) + word KD"
    paper = "Jin et al. 2024, Align-to-Distill: Trainable Attention Alignment for Knowledge Distillation in NMT"
    needs = frozenset({LOGITS, ATTENTIONS})
    forced_granularity: str | None = None
    Settings = A2DSettings
    reads_kd_cache = True  # its KD term
    reads_cached_maps = True  # and the teacher's maps, where the cache holds them
    families = None  # every family: the kinds it has (encoder-only: enc_self; decoder-only: dec_self)

    def __init__(self, settings: A2DSettings, student_config, teacher_config):
        super().__init__(settings, student_config, teacher_config)
        opts = self.settings  # checked against A2DSettings' choices
        self.granularity = self.forced_granularity or opts.att_granularity
        self.kind_weights = kind_weights(opts.att_kinds)  # eq. 11 / Table 5
        if opts.att_kinds == "all" and len(self.student_shape.kinds) == 1:  # one kind: L_att is its loss
            self.kind_weights = {self.student_shape.kinds[0]: 1.0}
        check_kinds(self.name, self.kind_weights, self.student_shape)
        self.kinds = tuple(k for k in KINDS if k in self.kind_weights)
        self.aam_mode = opts.aam
        self.shapes: dict[str, dict] = {}
        modules = {}
        for kind in self.kinds:
            s_layers, s_heads = self.student_shape.layers_heads(kind)
            t_layers, t_heads = self.teacher_shape.layers_heads(kind)
            per_layer = 1 if self.granularity == "layer" else None
            n_student = s_layers * (per_layer or s_heads)
            n_teacher = t_layers * (per_layer or t_heads)
            self.shapes[kind] = {
                "n_student": n_student, "n_teacher": n_teacher,
                "student_layers": s_layers, "student_heads": s_heads,
                "teacher_layers": t_layers, "teacher_heads": t_heads,
                "student_maps_per_layer": per_layer or s_heads, "teacher_maps_per_layer": per_layer or t_heads,
            }
            modules[kind] = AttentionAlignment(n_student, n_teacher, mode=opts.aam)
        self.aam = nn.ModuleDict(modules)

    def cached_map_kinds(self, attention: dict | None, where: str) -> tuple[str, ...]:
        """Every kind it transfers, when the cache holds their maps for this teacher's layers and heads; ()
        without maps. The cache keeps each example's real cells only, so ``kl_norm=reference`` (which reads the
        padding cells too) cannot use it."""
        if not attention:
            return ()
        for kind in self.kinds:
            if kind not in attention["kinds"]:
                raise UserError(f"{where}: holds no {kind} attention maps; build it again with this teacher")
            cached = (int(attention["layers"][kind]), int(attention["heads"][kind]))
            live = self.teacher_shape.layers_heads(kind)
            if cached != live:
                raise UserError(f"{where}: its {kind} maps are of {cached[0]} layers x {cached[1]} heads, the teacher "
                                f"has {live[0]} x {live[1]}; build it again with this teacher")
        if self.settings.kl_norm == "reference":
            raise UserError(f"{where}: holds the teacher's attention maps over real tokens only, and kl_norm=reference "
                            "reads the padding cells too; use kl_norm=per-query, or a cache without attention maps")
        return self.kinds

    # ------------------------------------------------------------------------------------------
    def attention_losses(self, batch: dict[str, torch.Tensor], student, teacher) -> dict[str, torch.Tensor]:
        """Eq. 10 per kind: ``{kind: L_att^kind}`` (0-dim fp32), AAM on the student's maps only. The teacher's maps
        come from its forward pass, or from the teacher cache with the batch (``TEACHER_MAPS``)."""
        s_maps = collect_attention(student, batch, self.granularity, self.kinds)
        if all(TEACHER_MAPS[kind] in batch for kind in self.kinds):
            t_maps = {kind: cached_attention(batch, kind, *self.teacher_shape.layers_heads(kind), self.granularity)
                      for kind in self.kinds}
        else:
            t_maps = collect_attention(teacher, batch, self.granularity, self.kinds)
        losses = {}
        for kind in self.kinds:
            s, t = s_maps[kind], t_maps[kind]
            expected = (self.shapes[kind]["n_student"], self.shapes[kind]["n_teacher"])
            if (s.n_maps, t.n_maps) != expected:
                raise ValueError(f"{kind}: got {s.n_maps} student / {t.n_maps} teacher maps, the AAM was built "
                                 f"for {expected[0]} / {expected[1]} (configs and models disagree)")
            intermediate = self.aam[kind](s.maps)  # (B, C, Lq, Lk), eq. 9
            target = t.maps.detach()
            if self.settings.kl_norm == "reference":
                losses[kind] = attention_kl_reference(target, intermediate)
            else:
                losses[kind] = attention_kl_per_query(target, intermediate, s.query_mask, s.key_mask)
        return losses

    def loss_terms(self, batch, student, teacher, progress: Progress) -> dict[str, torch.Tensor]:
        if teacher is None and not all(TEACHER_MAPS[kind] in batch for kind in self.kinds):
            raise ValueError(f"method {self.name} needs the teacher's forward pass or its cached maps")
        per_kind = self.attention_losses(batch, student, teacher)
        att = sum(self.kind_weights[k] * per_kind[k] for k in self.kinds)  # eq. 11
        terms = {"att": att}
        for kind, value in per_kind.items():
            terms[f"att_{kind}"] = value.detach()
        # live logits, or the cache's top-K (kd_cache: the teacher then runs without its lm_head, for its maps, unless
        # the cache holds them too)
        terms[KD_TERM] = kd_loss(student.logits, teacher, batch, self.settings.kd_temperature)
        return terms

    def weights(self, progress: Progress) -> dict[str, float]:
        opts = self.settings
        lam = lambda_schedule(opts.lambda_att, opts.lambda_decay, opts.lambda_decay_unit,
                              progress.epoch, progress.update, progress.updates_per_epoch)
        w = {"att": lam, KD_TERM: float(self.settings.mu_kd)}
        for kind in self.kinds:
            w[f"att_{kind}"] = 0.0
        return w

    # ------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-able description of the AAMs (saved by the recipe as ``RUN/method.json``)."""
        return {
            "method": self.name,
            "granularity": self.granularity,
            "aam": self.aam_mode,
            "kl_norm": self.settings.kl_norm,
            "att_kinds": self.settings.att_kinds,
            "kind_weights": dict(self.kind_weights),
            "kinds": {kind: {**self.shapes[kind],
                             "state_key": f"aam.{kind}.{'logits' if self.aam_mode == 'convex' else 'weight'}"}
                      for kind in self.kinds},
        }

    @torch.no_grad()
    def alignment_weights(self) -> dict[str, torch.Tensor]:
        """``{kind: w (n_student, n_teacher)}``, the effective eq. 9 weights (softmaxed for convex), on CPU."""
        return {kind: self.aam[kind].weight_matrix().detach().cpu() for kind in self.kinds}


class A2DLayerwise(AlignToDistill):
    """Layer-wise A2D (Table 4): per-layer head-averaged maps, AAM over layers instead of heads."""

    name = "a2d-layerwise"
    label = "A2D (layer-wise)"
    summary = "layer-wise A2D (Table 4): head-averaged maps per layer, AAM over layers + word KD"
    forced_granularity = "layer"


__all__ = ["AlignToDistill", "A2DLayerwise", "A2DSettings"]
