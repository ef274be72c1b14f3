"""``kd``: word-level knowledge distillation, the "Vanilla KD" row of the A2D paper's tables.

Hinton et al. 2015 (eq. 1): soft targets ``q_i = exp(z_i / T) / sum_j exp(z_j / T)`` from the teacher's
logits ``z`` at temperature ``T``, matched by the student's tempered distribution, the loss scaled by
``T^2`` so that its gradients keep their size when ``T`` changes (section 2). For NMT this is applied
at every target position, given the reference prefix (Kim & Rush 2016, section 3.1, word-level KD):

    L_KD = 1/N * sum_{real target tokens j} T^2 * KL(q_T(. | x, y_<j) || p_S(. | x, y_<j))

(:func:`a2d.losses.word_kd`; the KL differs from the cross-entropy to the soft targets only by the
teacher's entropy, a constant, so the gradients are the same). N counts the real target tokens of the
batch, padding never takes part.

How the A2D paper uses it: "vanilla KD" is eq. 12 without the attention term,
``L = L_CE + mu * L_KD`` (``mu_kd``, default 1; ``kd_temperature``, default 1, as in the authors'
code). The authors' fairseq code mixes ``(1 - alpha) * CE + alpha * KD`` with ``alpha = 0.5`` and
averages over all positions including padding; up to that constant factor and the padding it is the
same objective (``mu_kd=1`` here).
"""
from __future__ import annotations

from dataclasses import dataclass

from a2d.config import setting
from a2d.methods.base import KD_TERM, LOGITS, DistillMethod, MethodSettings, Progress
from a2d.losses import IDS_KEY, kd_loss


@dataclass
class WordKDSettings(MethodSettings):
    """Word-level KD."""

    mu_kd: float = setting(1.0, "weight of word-level KD (mu in L = CE + lambda*L_att + mu*L_KD)", low=0.0)
    kd_temperature: float = setting(1.0, "softmax temperature of word-level KD", low=1e-3)
    kd_cache: str = setting("", "a teacher cache (a2d distill-data --cache-topk K --kd-temperature T, T = this run's "
                            "kd_temperature): the KD term reads the teacher's top-K log-probabilities and rest mass "
                            "from it instead of running the teacher for logits; empty: live (docs/kd-cache.md)")


class WordKD(DistillMethod):
    """Word-level KD. Term: ``kd`` (``T^2 * KL(teacher || student)`` per real target token, weight ``mu_kd``)."""

    name = "kd"
    label = "Vanilla KD"
    baseline = "kd"
    summary = "word-level KD (vanilla KD): KL to the teacher's tempered token distributions, weight mu_kd"
    paper = "Hinton et al. 2015, Distilling the Knowledge in a Neural Network"
    needs = frozenset({LOGITS})
    Settings = WordKDSettings
    families = None  # logits are all it reads
    reads_kd_cache = True  # kd_cache=CACHE: the batch carries the teacher's top-K and the teacher does not run

    def loss_terms(self, batch, student, teacher, progress: Progress):
        if teacher is None and IDS_KEY not in batch:
            raise ValueError(f"method {self.name} needs the teacher's forward pass or a kd_cache")
        # logits (B, T, V); the teacher's (live or cached) are a fixed target
        kd = kd_loss(student.logits, teacher, batch, self.settings.kd_temperature)
        return {KD_TERM: kd}

    def weights(self, progress: Progress):
        return {KD_TERM: float(self.settings.mu_kd)}


__all__ = ["WordKD", "WordKDSettings"]
