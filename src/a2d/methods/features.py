"""What the feature baselines (tinybert, minilm, alp-kd, pkd, ckd) share: their settings, token masks,
hidden states of real tokens, the per-token MSE, projections between widths, the uniform layer map, and the
base of pkd and ckd (one hidden-state term plus word KD)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from a2d.config import setting
from a2d.families import Shape
from a2d.losses import IGNORE, word_kd
from a2d.methods.base import HIDDEN_STATES, KD_TERM, LOGITS, DistillMethod, Progress
from a2d.methods.kd import WordKDSettings
from a2d.utils import UserError


@dataclass
class FeatureSettings(WordKDSettings):
    """Feature losses of the hidden-state and attention baselines."""

    feature_weight: float = setting(1.0, "weight of the feature losses of tinybert/minilm/alp-kd/pkd/ckd", low=0.0)


SIDES = ("encoder", "decoder")

def check_equal_heads(name: str, student: Shape, teacher: Shape) -> None:
    """One-line :class:`UserError` when encoder or decoder head counts differ between the models' shapes."""
    for side in student.sides:
        s = int(getattr(student, f"{side}_attention_heads"))
        t = int(getattr(teacher, f"{side}_attention_heads"))
        if s != t:
            where = "" if side == "encoder" else " (decoder)"
            raise UserError(f"{name} needs equal attention heads: student {s}, teacher {t}{where}")


def token_masks(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"encoder": (B, S) bool, "decoder": (B, T) bool}``, True at real tokens.

    The decoder mask is ``decoder_attention_mask``, else ``labels != -100``; a missing mask means all real.
    """
    masks = {}
    src = batch["input_ids"]
    masks["encoder"] = (batch["attention_mask"].bool() if batch.get("attention_mask") is not None
                        else torch.ones_like(src, dtype=torch.bool))
    if batch.get("decoder_attention_mask") is not None:
        masks["decoder"] = batch["decoder_attention_mask"].bool()
    elif batch.get("labels") is not None:
        masks["decoder"] = batch["labels"].ne(IGNORE)
    else:
        masks["decoder"] = torch.ones_like(batch["decoder_input_ids"], dtype=torch.bool)
    return masks


def hidden_states(output, side: str) -> tuple[torch.Tensor, ...]:
    """``output.{side}_hidden_states``: layers + 1 tensors ``(B, L, d)``, index 0 the embeddings."""
    states = getattr(output, f"{side}_hidden_states", None)
    if not states or any(h is None for h in states):
        raise ValueError(f"the model output has no {side}_hidden_states: run the forward pass with "
                         "output_hidden_states=True")
    return tuple(states)


def real_tokens(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, L, d)`` -> ``(N, d)`` fp32: the vectors of the N real tokens (mask ``(B, L)`` bool).

    Everything downstream (projections included) sees only real tokens, so whatever padded positions
    hold, even inf or NaN, changes neither a loss nor a gradient.
    """
    return h[mask.bool()].float()


def token_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, d)`` x2 -> mean over the N tokens of the per-token mean squared error over features (0-dim)."""
    return (a - b).pow(2).mean(-1).sum() / max(a.shape[0], 1)


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`token_mse` of the real tokens of ``a``, ``b`` ``(B, L, d)``, mask ``(B, L)``. fp32, 0-dim."""
    return token_mse(real_tokens(a, mask), real_tokens(b, mask))


def projection(d_in: int, d_out: int, identity_if_equal: bool = True) -> nn.Module:
    """A learned ``Linear(d_in, d_out)`` owned by the method. With equal widths: an identity-initialised
    ``Linear`` if ``identity_if_equal`` (TinyBERT), else ``nn.Identity`` (no projection, no parameters)."""
    if d_in == d_out and not identity_if_equal:
        return nn.Identity()
    layer = nn.Linear(d_in, d_out)
    if d_in == d_out:
        with torch.no_grad():
            layer.weight.copy_(torch.eye(d_in))
            layer.bias.zero_()
    return layer


def uniform_layer_map(n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """``[(i, ceil(i * N_T / N_S)) for i = 1..N_S]``: student layer i <- the teacher layer at the same
    relative depth (TinyBERT's ``g(m) = m * N / M``; exact when N_T is a multiple of N_S, the top
    student layer always takes the top teacher layer)."""
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"layer counts must be >= 1 (student {n_student}, teacher {n_teacher})")
    return [(i, -(-i * n_teacher // n_student)) for i in range(1, n_student + 1)]


class HiddenStateKD(DistillMethod):
    """Base of pkd and ckd. Terms: ``term`` (:meth:`feature_loss` on ``side``'s hidden states), ``kd`` (word KD).

    ``L = L_CE + feature_weight * term + mu_kd * L_KD``; subclasses set ``term`` and write :meth:`feature_loss`.
    """

    needs = frozenset({LOGITS, HIDDEN_STATES})
    side = "encoder"
    term = ""

    def feature_loss(self, s_states: tuple[torch.Tensor, ...], t_states: tuple[torch.Tensor, ...],
                     mask: torch.Tensor) -> torch.Tensor:
        """The feature term from both models' ``(B, L, d)`` states (index 0 the embeddings), mask ``(B, L)``."""
        raise NotImplementedError

    def loss_terms(self, batch, student, teacher, progress: Progress) -> dict[str, torch.Tensor]:
        if teacher is None:
            raise ValueError(f"method {self.name} needs the teacher's forward pass")
        mask = token_masks(batch)[self.side]
        feature = self.feature_loss(hidden_states(student, self.side), hidden_states(teacher, self.side), mask)
        kd = word_kd(student.logits, teacher.logits.detach(), batch["labels"], self.settings.kd_temperature)
        return {self.term: feature, KD_TERM: kd}

    def weights(self, progress: Progress) -> dict[str, float]:
        return {self.term: float(self.settings.feature_weight), KD_TERM: float(self.settings.mu_kd)}


__all__ = ["FeatureSettings", "SIDES", "token_masks", "hidden_states", "real_tokens", "token_mse", "masked_mse",
           "projection", "uniform_layer_map", "HiddenStateKD", "check_equal_heads"]
