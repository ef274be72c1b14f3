"""SelectiveKD (``selective-kd``): batch-level token selection by student CE, KD on exactly those tokens."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import MarianConfig

from a2d.losses import token_nll, word_kd
from a2d.methods import METHODS, Progress
from a2d.methods.selective_kd import SelectiveKD, select_tokens
from a2d.settings import load_config
from a2d.utils import UserError
from tests.methods.test_kd import VOCAB, check_trains, make_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered():
    assert METHODS["selective-kd"] is SelectiveKD
    assert SelectiveKD.needs == frozenset({"logits"}) and SelectiveKD.needs_teacher
    assert "Wang" in SelectiveKD.paper
    with pytest.raises(UserError, match="needs a teacher"):
        SelectiveKD(load_config(None, ["method=selective-kd"]).settings, MarianConfig(), None)


@pytest.mark.parametrize("nll, labels, rate, expected", [
    # 5 real tokens, rate 0.5 -> round(2.5) = 2 (half to even): the two largest
    ([[0.1, 0.9, 0.5], [0.7, 0.2, 9.0]], [[5, 5, 5], [5, 5, -100]], 0.5, [[0, 1, 0], [1, 0, 0]]),
    # padding never chosen, however large its value
    ([[9.0, 0.1], [9.0, 0.3]], [[-100, 5], [-100, 5]], 1.0, [[0, 1], [0, 1]]),
    # rate 0 chooses nothing; 6 real tokens at rate 0.5 choose 3
    ([[1.0, 2.0, 3.0]], [[5, 5, 5]], 0.0, [[0, 0, 0]]),
    ([[1.0, 6.0, 3.0], [4.0, 5.0, 2.0]], [[5, 5, 5], [5, 5, 5]], 0.5, [[0, 1, 0], [1, 1, 0]]),
    # ties go to the earlier position (row-major)
    ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [[5, 5, 5], [5, 5, 5]], 0.5, [[1, 1, 1], [0, 0, 0]]),
    ([[2.0, 1.0], [1.0, 2.0]], [[5, 5], [5, 5]], 0.75, [[1, 1], [0, 1]]),
    # selection is over the whole batch: the hard sentence takes every slot
    ([[9.0, 8.0, 7.0], [0.1, 0.2, 0.3]], [[5, 5, 5], [5, 5, 5]], 0.5, [[1, 1, 1], [0, 0, 0]]),
])
def test_select_tokens_table(nll, labels, rate, expected):
    mask = select_tokens(torch.tensor(nll), torch.tensor(labels), rate)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[bool(x) for x in row] for row in expected]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.5, 0.77, 1.0])
def test_select_tokens_counts_and_ranks(rate):
    batch = make_batch(seed=1, b=6, t=9)
    labels = batch["labels"]
    nll = torch.rand(labels.shape, generator=torch.Generator().manual_seed(4)) * labels.ne(-100)
    mask = select_tokens(nll, labels, rate)
    real = labels.ne(-100)
    n_real = int(real.sum())
    assert int(mask.sum()) == round(rate * n_real)
    assert not (mask & ~real).any()
    if 0 < mask.sum() < n_real:
        assert nll[mask].min() >= nll[real & ~mask].max()
    with pytest.raises(ValueError):
        select_tokens(nll, labels, 1.5)


def _method(rate=0.5, temperature=1.0):
    cfg = load_config(None, ["method=selective-kd", f"selective_word_rate={rate}", f"kd_temperature={temperature}",
                             "mu_kd=0.5"])
    return SelectiveKD(cfg.settings, MarianConfig(), MarianConfig())


@pytest.mark.parametrize("rate", [0.3, 0.5, 1.0])
def test_kd_touches_exactly_the_hardest_share(rate):
    method = _method(rate, temperature=2.0)
    batch = make_batch(seed=2, b=5, t=8)
    labels = batch["labels"]
    g = torch.Generator().manual_seed(0)
    student_logits = (torch.randn(*labels.shape, VOCAB, generator=g) * 3).requires_grad_(True)
    teacher_logits = torch.randn(*labels.shape, VOCAB, generator=g) * 3
    terms = method.loss_terms(batch, SimpleNamespace(logits=student_logits), SimpleNamespace(logits=teacher_logits),
                              Progress(1, 0))
    assert set(terms) == {"kd"} and method.weights(Progress(1, 0)) == {"kd": 0.5}
    nll = token_nll(student_logits.detach(), labels)
    chosen = select_tokens(nll, labels, rate)
    real = labels.ne(-100)
    assert int(chosen.sum()) == round(rate * int(real.sum()))
    # the highest-CE real tokens
    if rate < 1.0:
        assert nll[chosen].min() >= nll[real & ~chosen].max()
    expected = word_kd(student_logits.detach(), teacher_logits, labels, 2.0, token_mask=chosen)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-6)
    # gradient flows to exactly the chosen positions
    terms["kd"].backward()
    touched = student_logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, chosen)


def test_full_rate_equals_word_kd():
    method = _method(1.0)
    batch = make_batch(seed=5)
    s, t = torch.randn(4, 6, VOCAB), torch.randn(4, 6, VOCAB)
    kd = method.loss_terms(batch, SimpleNamespace(logits=s), SimpleNamespace(logits=t), Progress(1, 0))["kd"]
    assert kd.item() == pytest.approx(word_kd(s, t, batch["labels"]).item(), rel=1e-6)


def test_selective_kd_trains_tiny_student():
    terms = check_trains("selective-kd")
    assert set(terms) == {"kd"} and terms["kd"] > 0
