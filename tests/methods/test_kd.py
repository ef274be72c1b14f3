"""WordKD (``kd``): NumPy reference, limiting cases, detached teacher, training on tiny real models.

The helpers at the top (tiny models, a hand-made batch, a few optimizer steps) are shared by the
selective-kd and seq-kd tests.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import MarianConfig

from a2d.losses import label_smoothed_ce
from a2d.methods import METHODS, DistillMethod, Progress, get_method
from a2d.methods.kd import WordKD
from a2d.models import build_model
from a2d.settings import load_config
from a2d.utils import UserError
from tests.methods.common import VOCAB, forward, make_batch

TINY = ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1", "dropout=0.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, overrides=(), with_teacher: bool = True):
    """(cfg, student, teacher or None, method) on tiny models; the teacher is wider than the student."""
    cfg = load_config("tiny-student", TINY + [f"method={name}"] + list(overrides))
    student = build_model(cfg, VOCAB, seed=1)
    teacher = None
    if with_teacher:
        teacher = build_model(load_config("tiny-teacher", TINY + ["d_model=48", "encoder_layers=2"]), VOCAB, seed=2)
        teacher.eval()
        teacher.requires_grad_(False)
    method = get_method(name)(cfg.settings, student.config, teacher.config if teacher is not None else None)
    return cfg, student, teacher, method


def total_loss(cfg, method, batch, student, teacher, step: int = 0):
    """The distill recipe's mix: ``CE + sum_k weight_k * term_k``; returns (loss, terms)."""
    progress = Progress(epoch=1, update=step)
    with torch.no_grad():
        t_out = forward(teacher, batch) if teacher is not None else None
    s_out = forward(student, batch)
    terms = method.loss_terms(batch, s_out, t_out, progress)
    weights = method.weights(progress)
    ce = label_smoothed_ce(s_out.logits, batch["labels"], cfg.label_smoothing)
    loss = ce + sum(weights[k] * terms[k] for k in terms if weights.get(k, 0.0))
    return loss, terms


def check_trains(name: str, overrides=(), with_teacher: bool = True, steps: int = 8) -> dict:
    """Finite loss, gradients on every trainable part, a loss that falls on a fixed batch; returns the terms."""
    cfg, student, teacher, method = make(name, overrides, with_teacher)
    student.train()
    batch = make_batch(seed=3)
    loss, terms = total_loss(cfg, method, batch, student, teacher)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in terms.values())
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in terms.values())
    loss.backward()
    trainable = [(n, p) for n, p in list(student.named_parameters()) + list(method.named_parameters())
                 if p.requires_grad]
    for n, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    if teacher is not None:
        assert all(p.grad is None for p in teacher.parameters())
    opt = torch.optim.Adam([p for _, p in trainable], lr=3e-3)
    losses = [loss.item()]
    for step in range(1, steps):
        opt.step()
        opt.zero_grad()
        loss, _ = total_loss(cfg, method, batch, student, teacher, step)
        loss.backward()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    return terms


# ------------------------------------------------------------------------------------------------
def test_registered():
    assert METHODS["kd"] is WordKD
    assert WordKD.needs == frozenset({"logits"}) and WordKD.needs_teacher
    assert WordKD.summary and WordKD.paper.startswith("Hinton")


def test_reads_kd_cache_is_declared_by_every_method():
    """The base class declares it (False); the methods whose KD term takes the cache's top-K say True."""
    assert DistillMethod.__dict__["reads_kd_cache"] is False
    assert {name for name, cls in METHODS.items() if cls.reads_kd_cache} == {"kd", "selective-kd", "a2d",
                                                                               "a2d-layerwise"}


def test_needs_a_teacher():
    with pytest.raises(UserError, match="needs a teacher"):
        WordKD(load_config(None, ["method=kd"]).settings, MarianConfig(), None)


def _numpy_kd(s: np.ndarray, t: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    def log_softmax(x):
        x = x / temperature
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    total, n = 0.0, 0
    for b in range(labels.shape[0]):
        for j in range(labels.shape[1]):
            if labels[b, j] == -100:
                continue
            ls, lt = log_softmax(s[b, j]), log_softmax(t[b, j])
            total += float((np.exp(lt) * (lt - ls)).sum())
            n += 1
    return total / n * temperature ** 2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kd_equals_numpy(temperature):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 5)) * 2, rng.normal(size=(2, 3, 5)) * 2
    labels = np.array([[4, 1, 3], [2, 3, -100]])
    cfg = load_config(None, ["method=kd", f"kd_temperature={temperature}", "mu_kd=0.7"])
    method = WordKD(cfg.settings, MarianConfig(), MarianConfig())
    batch = {"labels": torch.tensor(labels)}
    student = SimpleNamespace(logits=torch.tensor(s, dtype=torch.float32))
    teacher = SimpleNamespace(logits=torch.tensor(t, dtype=torch.float32))
    terms = method.loss_terms(batch, student, teacher, Progress(1, 0))
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(_numpy_kd(s, t, labels, temperature), rel=1e-5)
    assert method.weights(Progress(1, 0)) == {"kd": 0.7}
    # padding takes no part: whatever the logits hold there
    s2, t2 = s.copy(), t.copy()
    s2[1, 2], t2[1, 2] = 100.0, -100.0
    terms2 = method.loss_terms(batch, SimpleNamespace(logits=torch.tensor(s2, dtype=torch.float32)),
                               SimpleNamespace(logits=torch.tensor(t2, dtype=torch.float32)), Progress(1, 0))
    assert terms2["kd"].item() == pytest.approx(terms["kd"].item(), rel=1e-6)


def test_kd_is_zero_for_equal_logits_and_teacher_is_detached():
    cfg = load_config(None, ["method=kd", "kd_temperature=2.0"])
    method = WordKD(cfg.settings, MarianConfig(), MarianConfig())
    batch = make_batch()
    logits = torch.randn(4, 6, VOCAB)
    teacher_logits = logits.clone().requires_grad_(True)
    student_logits = logits.clone().requires_grad_(True)
    kd = method.loss_terms(batch, SimpleNamespace(logits=student_logits), SimpleNamespace(logits=teacher_logits),
                           Progress(1, 0))["kd"]
    assert kd.item() == pytest.approx(0.0, abs=1e-6)
    (kd + 1.0).backward()
    assert teacher_logits.grad is None and student_logits.grad is not None


def test_kd_trains_tiny_student():
    terms = check_trains("kd")
    assert set(terms) == {"kd"} and terms["kd"] > 0
