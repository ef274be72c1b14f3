"""Loss functions, each a pure function of tensors. Shapes: B batch, T target length, V vocabulary.

Every loss is computed in fp32 whatever the model's precision, and is a mean over the real
(non-padding) target tokens of the batch, so its scale does not depend on how many sentences
or how much padding a batch holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # label of padded target positions


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross-entropy (Szegedy et al. 2016, fairseq's formula), mean per target token.

    logits (B, T, V); labels (B, T) with ``IGNORE`` at padding.
    ``(1 - eps) * nll + eps / V * sum_v -log p_v``.
    """
    mask = labels.ne(IGNORE)
    lprobs = F.log_softmax(logits.float(), dim=-1)[mask]  # (N, V)
    target = labels[mask]
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.mean(dim=-1)
    return ((1.0 - epsilon) * nll + epsilon * smooth).sum() / mask.sum().clamp(min=1)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain negative log-likelihood per target token (B, T), 0 at padding."""
    mask = labels.ne(IGNORE)
    lprobs = F.log_softmax(logits.float(), dim=-1)
    nll = -lprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll * mask


def word_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 1.0, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Word-level KD (Hinton et al. 2015): ``T^2 * KL(p_T^(1/T) || p_S^(1/T))`` per target token.

    logits (B, T, V); labels (B, T) mark the real tokens; ``token_mask`` (B, T) bool narrows the
    tokens that take part (selective KD). Mean over the tokens that take part.
    """
    mask = labels.ne(IGNORE)
    if token_mask is not None:
        mask = mask & token_mask
    s = F.log_softmax(student_logits.float()[mask] / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits.float()[mask] / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    return kl.sum() / mask.sum().clamp(min=1) * temperature ** 2
