"""``selective-kd``: word-level KD on the hardest target tokens only (Wang et al. 2021).

Wang et al. 2021 (their batch-level selection, BLS): within each batch, rank the real target words by
the student's cross-entropy against the reference, ``CE_j = -log p_S(y_j | x, y_<j)``, and apply
word-level KD only to the top ``r`` share of them, the words the student finds hardest; the
cross-entropy to the reference still covers every word:

    S    = the round(r * N) real target tokens of the batch with the highest CE_j   (N real tokens)
    L_KD = 1/|S| * sum_{j in S} T^2 * KL(q_T(. | x, y_<j) || p_S(. | x, y_<j))
    L    = L_CE + mu * L_KD

The ranking uses the plain (not label-smoothed) NLL, detached: selection passes no gradient. Ties are
broken by position (the earlier token in the row-major ``(B, T)`` order wins), so the selection is
deterministic. The paper's global-level selection (a FIFO queue of recent CE values setting the
threshold) is not implemented; batch-level selection is the variant the A2D paper's baseline
describes ("word rate" 0.5, ``selective_word_rate``).

How the A2D paper uses it: the Table 1 "Selective KD" baseline, eq. 12 without the attention term and
with L_KD restricted to S (``mu_kd``, ``kd_temperature`` as for ``kd``). L_KD is a mean over the
selected tokens; dividing the same sum by all N real tokens instead (fairseq's per-token
normalisation) would scale it by ``r``, a constant factor that ``mu_kd`` absorbs. Under data
parallelism each process selects within its own batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from a2d.config import setting
from a2d.losses import IDS_KEY, IGNORE, kd_loss, token_nll
from a2d.methods.base import KD_TERM, Progress
from a2d.methods.kd import WordKD, WordKDSettings


@dataclass
class SelectiveKDSettings(WordKDSettings):
    """Selective KD."""

    selective_word_rate: float = setting(0.5, "selective-kd: share of target tokens that receive KD",
                                         low=0.0, high=1.0)


def select_tokens(nll: torch.Tensor, labels: torch.Tensor, rate: float) -> torch.Tensor:
    """Batch-level selection: a bool mask (B, T) of the ``round(rate * n_real)`` highest-``nll`` real tokens.

    nll (B, T), any values at padding; labels (B, T) with ``IGNORE`` at padding, which is never
    selected. ``round`` is Python's (half to even). Ties go to the earlier position in row-major order.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate={rate}: must be within [0, 1]")
    if nll.shape != labels.shape:
        raise ValueError(f"nll {tuple(nll.shape)} and labels {tuple(labels.shape)} differ in shape")
    real = labels.ne(IGNORE)
    n_real = int(real.sum())
    k = min(n_real, round(rate * n_real))
    flat = torch.zeros(real.numel(), dtype=torch.bool, device=real.device)
    if k > 0:
        scores = nll.detach().float().masked_fill(~real, float("-inf")).flatten()
        # a stable sort keeps equal scores in position order, so ties go to the earlier token
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        flat[order] = True
    return flat.view(real.shape)


class SelectiveKD(WordKD):
    """Selective KD, word-level KD restricted to the selected tokens. Term: ``kd`` (weight ``mu_kd``)."""

    name = "selective-kd"
    label = "Selective KD"
    baseline = None  # not the vanilla-KD baseline that WordKD is
    summary = ("selective KD: word-level KD only on the batch's hardest target tokens by student CE "
               "(selective_word_rate, 0.5)")
    paper = "Wang et al. 2021, Selective Knowledge Distillation for Neural Machine Translation"
    Settings = SelectiveKDSettings

    def loss_terms(self, batch, student, teacher, progress: Progress):
        if teacher is None and IDS_KEY not in batch:
            raise ValueError(f"method {self.name} needs the teacher's forward pass or a kd_cache")
        labels = batch["labels"]
        with torch.no_grad():
            nll = token_nll(student.logits.detach(), labels)  # (B, T), 0 at padding
        selected = select_tokens(nll, labels, self.settings.selective_word_rate)
        kd = kd_loss(student.logits, teacher, batch, self.settings.kd_temperature, token_mask=selected)
        return {KD_TERM: kd}


__all__ = ["SelectiveKD", "SelectiveKDSettings", "select_tokens"]
