"""Attention-transfer losses (eq. 10-12) against plain loops on small random tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2d.alignment import AttentionAlignment
from a2d.losses import (IDS_KEY, KIND_WEIGHTS, LOGP_KEY, REST_KEY, attention_kl_per_query, attention_kl_reference,
                        cached_word_kd, kd_loss, kind_weights, label_smoothed_ce, lambda_schedule, layer_average,
                        log_probs, word_kd)
from a2d.utils import UserError


def masked_maps(b, c, lq, lk, key_valid, seed=0):
    """Random row-distributions over the valid keys; key_valid broadcastable to (B, Lq, Lk)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, c, lq, lk, generator=g)
    scores = scores.masked_fill(~key_valid.expand(b, lq, lk)[:, None], float("-inf"))
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)


def setup_masks():
    b, lq, lk = 3, 5, 6
    query_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    src = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    key_mask = src[:, None, :]  # (B, 1, Lk)
    return b, lq, lk, query_mask, key_mask


# ---------------------------------------------------------------------------- reference arithmetic
def test_reference_kl_matches_loop():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(2, 3, 4, 5, generator=g)
    i = torch.randn(2, 3, 4, 5, generator=g)
    got = attention_kl_reference(t, i).item()
    ref = 0.0
    for b in range(2):
        for c in range(3):
            tf = t[b, c].double().flatten().numpy()
            xf = i[b, c].double().flatten().numpy()
            lt = tf - np.log(np.exp(tf).sum())
            li = xf - np.log(np.exp(xf).sum())
            ref += float((np.exp(lt) * (lt - li)).sum())
    assert got == pytest.approx(ref, rel=1e-5)
    assert attention_kl_reference(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # no masking, no normalisation: doubling the batch doubles the loss
    assert attention_kl_reference(torch.cat([t, t]), torch.cat([i, i])).item() == pytest.approx(2 * got, rel=1e-5)


def test_reference_kl_fp32_on_half_inputs():
    t = torch.rand(1, 2, 3, 3).to(torch.bfloat16)
    out = attention_kl_reference(t, torch.rand(1, 2, 3, 3).to(torch.bfloat16))
    assert out.dtype == torch.float32 and out.dim() == 0


# ---------------------------------------------------------------------------- per-query KL
def loop_per_query(t, i, query_mask, key_valid, eps=1e-8):
    """sum over valid queries and maps of KL(T_row || I_row) over valid keys / #valid queries."""
    b, c, lq, lk = t.shape
    kv = key_valid.expand(b, lq, lk)
    total = 0.0
    for bi in range(b):
        for q in range(lq):
            if not query_mask[bi, q]:
                continue
            keys = [k for k in range(lk) if kv[bi, q, k]]
            for ci in range(c):
                tr = np.array([float(t[bi, ci, q, k]) for k in keys])
                ir = np.array([max(float(i[bi, ci, q, k]), eps) for k in keys])
                tr, ir = tr / tr.sum(), ir / ir.sum()
                total += sum(p * math.log(p / r) for p, r in zip(tr, ir) if p > 0)
    return total / int(query_mask.sum())


def test_per_query_kl_matches_loop_padding_keys():
    b, lq, lk, qm, km = setup_masks()
    t = masked_maps(b, 4, lq, lk, km, seed=1)
    i = masked_maps(b, 4, lq, lk, km, seed=2)
    got = attention_kl_per_query(t, i, qm, km).item()
    assert got == pytest.approx(loop_per_query(t.double(), i.double(), qm, km), rel=1e-5)
    assert got > 0


def test_per_query_kl_matches_loop_causal_and_unnormalised_intermediate():
    b, lq, t_len = 2, 5, 5
    tgt = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    causal = torch.ones(lq, t_len, dtype=torch.bool).tril()
    km = tgt[:, None, :] & causal  # (B, T, T)
    t = masked_maps(b, 3, lq, t_len, km, seed=3)
    i = torch.randn(b, 3, lq, t_len, generator=torch.Generator().manual_seed(4))  # linear-AAM-like: negatives
    got = attention_kl_per_query(t, i, tgt, km).item()
    assert got == pytest.approx(loop_per_query(t.double(), i.double(), tgt, km), rel=1e-5)


def test_per_query_kl_zero_for_identical_maps_and_identity_aam():
    b, lq, lk, qm, km = setup_masks()
    s = masked_maps(b, 6, lq, lk, km, seed=5)
    assert attention_kl_per_query(s, s, qm, km).item() == pytest.approx(0.0, abs=1e-6)
    aam = AttentionAlignment(6, 6, mode="convex")
    with torch.no_grad():
        aam.logits.copy_(torch.eye(6) * 60.0)  # softmax ~ identity
    assert torch.allclose(aam.weight_matrix(), torch.eye(6), atol=1e-12)
    assert attention_kl_per_query(s, aam(s), qm, km).item() == pytest.approx(0.0, abs=1e-5)
    lin = AttentionAlignment(6, 6, mode="linear")
    with torch.no_grad():
        lin.weight.copy_(torch.eye(6))
        lin.bias.zero_()
    assert attention_kl_per_query(s, lin(s), qm, km).item() == pytest.approx(0.0, abs=1e-5)


def test_per_query_kl_ignores_padding_values():
    b, lq, lk, qm, km = setup_masks()
    t = masked_maps(b, 4, lq, lk, km, seed=6)
    i = masked_maps(b, 4, lq, lk, km, seed=7)
    base = attention_kl_per_query(t, i, qm, km)
    invalid = ~(qm[:, :, None] & km)[:, None].expand_as(t)
    g = torch.Generator().manual_seed(8)
    for fill in (lambda x: torch.rand(x.shape, generator=g) * 5, lambda x: torch.full(x.shape, float("nan")),
                 lambda x: -torch.rand(x.shape, generator=g)):
        t2 = torch.where(invalid, fill(t), t)
        i2 = torch.where(invalid, fill(i), i)
        assert attention_kl_per_query(t2, i2, qm, km).item() == pytest.approx(base.item(), rel=1e-6)


def test_per_query_kl_scale_independent_of_batch_composition():
    b, lq, lk, qm, km = setup_masks()
    t = masked_maps(b, 4, lq, lk, km, seed=9)
    i = masked_maps(b, 4, lq, lk, km, seed=10)
    one = attention_kl_per_query(t, i, qm, km)
    two = attention_kl_per_query(torch.cat([t, t]), torch.cat([i, i]), torch.cat([qm, qm]), torch.cat([km, km]))
    assert two.item() == pytest.approx(one.item(), rel=1e-6)


def test_per_query_kl_gradient_only_at_valid_cells():
    b, lq, lk, qm, km = setup_masks()
    t = masked_maps(b, 2, lq, lk, km, seed=11)
    i = masked_maps(b, 2, lq, lk, km, seed=12).requires_grad_(True)
    attention_kl_per_query(t, i, qm, km).backward()
    invalid = ~(qm[:, :, None] & km)[:, None].expand_as(t)
    assert torch.isfinite(i.grad).all()
    assert i.grad[invalid].abs().max() == 0
    assert i.grad[~invalid].abs().sum() > 0


# ---------------------------------------------------------------------------- helpers
def test_layer_average_matches_loop():
    maps = torch.rand(2, 6, 3, 4)
    got = layer_average(maps, 3)
    assert got.shape == (2, 2, 3, 4)
    for n in range(2):
        assert torch.allclose(got[:, n], (maps[:, 3 * n] + maps[:, 3 * n + 1] + maps[:, 3 * n + 2]) / 3)
    with pytest.raises(ValueError):
        layer_average(maps, 4)


def test_kind_weights():
    assert KIND_WEIGHTS["all"] == {"enc_self": 1, "dec_self": 0.5, "dec_cross": 0.5}  # eq. 11
    assert kind_weights("dec-self") == {"dec_self": 1.0}  # Table 5: single decoder kind weight 1
    assert kind_weights("dec-cross") == {"dec_cross": 1.0}
    assert kind_weights("dec-all") == {"dec_self": 0.5, "dec_cross": 0.5}
    assert kind_weights("enc-self") == {"enc_self": 1.0}
    with pytest.raises(UserError, match="att_kinds"):
        kind_weights("enc_self")


def test_lambda_schedule():
    assert lambda_schedule(1.0, 0.9, "epoch", 1, 0) == 1.0
    assert lambda_schedule(1.0, 0.9, "epoch", 3, 999) == pytest.approx(0.81)
    assert lambda_schedule(0.1, 0.9, "epoch", 2, 0) == pytest.approx(0.09)
    assert lambda_schedule(1.0, 0.9, "update", 1, 50, updates_per_epoch=100) == pytest.approx(0.9 ** 0.5)
    assert lambda_schedule(1.0, 0.9, "update", 1, 200, updates_per_epoch=100) == pytest.approx(0.81)
    assert lambda_schedule(2.0, 0.99, "update", 1, 10) == pytest.approx(2.0 * 0.99 ** 10)
    with pytest.raises(UserError, match="lambda_decay_unit"):
        lambda_schedule(1.0, 0.9, "step", 1, 0)


def test_existing_losses_still_there():
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    assert label_smoothed_ce(logits, labels).dim() == 0
    assert word_kd(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------- logit losses, bit-compatible
def _ce_masked_rows(logits, labels, eps):  # the formulas before the shared log-probabilities (commit 210101b)
    mask = labels.ne(-100)
    lprobs = torch.log_softmax(logits.float(), dim=-1)[mask]
    nll = -lprobs.gather(-1, labels[mask].unsqueeze(-1)).squeeze(-1)
    return ((1.0 - eps) * nll + eps * -lprobs.mean(dim=-1)).sum() / mask.sum()


def _kd_masked_rows(student, teacher, labels, temperature, token_mask=None):
    mask = labels.ne(-100) if token_mask is None else labels.ne(-100) & token_mask
    s = torch.log_softmax(student.float()[mask] / temperature, dim=-1)
    t = torch.log_softmax(teacher.float()[mask] / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).sum() / mask.sum() * temperature ** 2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_logit_losses_match_the_masked_row_formulas_values_and_gradients(temperature):
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([[5, 9, 2, -100, -100], [1, 4, 4, 7, 3], [6, -100, -100, -100, -100]])
    teacher = torch.randn(3, 5, 11, generator=g) * 3
    token_mask = torch.rand(3, 5, generator=g) > 0.3
    results = []
    for new in (True, False):
        student = (torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(4)) * 3).requires_grad_(True)
        if new:  # CE first, then KD on the same logits
            terms = [label_smoothed_ce(student, labels, 0.1), word_kd(student, teacher, labels, temperature),
                     word_kd(student, teacher, labels, temperature, token_mask)]
        else:
            terms = [_ce_masked_rows(student, labels, 0.1), _kd_masked_rows(student, teacher, labels, temperature),
                     _kd_masked_rows(student, teacher, labels, temperature, token_mask)]
        (terms[0] + 0.7 * terms[1] + 0.3 * terms[2]).backward()
        results.append(([t.item() for t in terms], student.grad))
    (new_values, new_grad), (old_values, old_grad) = results
    assert new_values == pytest.approx(old_values, rel=1e-6, abs=1e-7)
    assert torch.allclose(new_grad, old_grad, rtol=1e-5, atol=1e-7)
    assert new_grad[labels.eq(-100)].abs().max() == 0  # padding positions get no gradient


def test_log_probs_is_the_tempered_log_softmax_and_the_losses_keep_nothing_on_the_logits():
    """The losses stream over the vocabulary (tests/test_streamed_losses.py): no (B, T, V) log-probabilities are
    memoised on the logits tensor any more."""
    logits = torch.randn(2, 3, 7, requires_grad=True)
    assert torch.allclose(log_probs(logits, 2.0), torch.log_softmax(logits / 2, -1))
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    label_smoothed_ce(logits, labels) + word_kd(logits, logits.detach() + 1, labels, 2.0)
    assert not logits.__dict__


# ---------------------------------------------------------------------------- word KD from a teacher cache
def cache_of(teacher_logits, k, temperature):
    """What a teacher cache holds for these logits (a2d.recipes.cache_teacher.compute_shard's arithmetic):
    the top-k ids and tempered log-probabilities, and the tempered log-mass of the rest (-inf when k = V)."""
    t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    top = t.topk(k, dim=-1)
    return top.indices, top.values, t.scatter(-1, top.indices, float("-inf")).logsumexp(-1)


def peaked_logits(*shape, seed):
    """Logits as peaked as a trained teacher's: at T = 1 most probabilities lie below fp16's smallest normal
    number (6.1e-5), where the format-1 cache's fp16 probabilities lost them."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 6


KD_LABELS = torch.tensor([[5, 9, 2, -100, -100], [1, 4, 4, 7, 3], [6, -100, -100, -100, -100]])


def kd_value_and_grad(loss_fn, student):
    student = student.detach().clone().requires_grad_(True)
    loss = loss_fn(student)
    grad, = torch.autograd.grad(loss, student)
    return loss.detach(), grad


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_cached_word_kd_with_every_id_cached_is_word_kd_value_and_gradient(temperature):
    """K = V: the rest bucket is empty and the cached loss is the live one, in value and in gradient (the
    format-1 cache, fp16 probabilities re-tempered, was 5% off at T = 2 and 75% at T = 4)."""
    teacher = peaked_logits(3, 5, 40, seed=1)
    assert (teacher.softmax(-1) < 6.1e-5).float().mean() > 0.5
    student = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(2)) * 3
    token_mask = torch.rand(3, 5, generator=torch.Generator().manual_seed(5)) > 0.3
    ids, logp, rest = cache_of(teacher, 40, temperature)
    assert torch.isinf(rest).all()
    for mask in (None, token_mask):
        live, g_live = kd_value_and_grad(lambda s: word_kd(s, teacher, KD_LABELS, temperature, mask), student)
        cached, g_cached = kd_value_and_grad(
            lambda s: cached_word_kd(s, ids, logp, rest, KD_LABELS, temperature, mask), student)
        assert live > 0.1
        assert torch.allclose(cached, live, rtol=1e-5, atol=1e-6), (cached, live)
        assert torch.isfinite(g_cached).all()
        assert torch.allclose(g_cached, g_live, rtol=1e-4, atol=1e-7), (g_cached - g_live).abs().max()
    # kd_loss reads the cache from the batch when it carries one
    batch = {"labels": KD_LABELS, IDS_KEY: ids, LOGP_KEY: logp, REST_KEY: rest}
    s = student.clone()
    assert torch.equal(kd_loss(s, None, batch, temperature), cached_word_kd(s, ids, logp, rest, KD_LABELS, temperature))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("k", [1, 8, 20])
def test_cached_word_kd_has_its_minimum_at_the_teacher_for_any_k(k, temperature):
    """K < V: a student equal to the teacher (its logits shifted by a constant per position, the same
    distribution) gets loss 0 and gradient 0; any other student a positive loss, at most the live KL (the K + 1
    buckets coarsen the vocabulary). Renormalising over the top K (format 1) left the teacher a loss of about
    -log(top-K mass) and a gradient pulling it away."""
    teacher = peaked_logits(3, 5, 40, seed=1)
    ids, logp, rest = cache_of(teacher, k, temperature)
    assert torch.isfinite(rest).all()  # the rest bucket holds mass
    same = teacher + torch.randn(3, 5, 1, generator=torch.Generator().manual_seed(3))
    loss, grad = kd_value_and_grad(lambda s: cached_word_kd(s, ids, logp, rest, KD_LABELS, temperature), same)
    assert abs(loss.item()) < 1e-5, loss
    assert grad.abs().max().item() < 1e-6, grad.abs().max()
    other = teacher + torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(4)) * 2
    loss, grad = kd_value_and_grad(lambda s: cached_word_kd(s, ids, logp, rest, KD_LABELS, temperature), other)
    live = word_kd(other, teacher, KD_LABELS, temperature)
    assert 1e-3 < loss.item() <= live.item() * (1 + 1e-5) + 1e-6, (loss, live)
    assert grad[KD_LABELS.ne(-100)].abs().max() > 1e-4 and grad[KD_LABELS.eq(-100)].abs().max() == 0


def test_cached_word_kd_ignores_whatever_padded_positions_hold():
    teacher = peaked_logits(3, 5, 40, seed=1)
    ids, logp, rest = cache_of(teacher, 8, 2.0)
    student = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(2))
    pad = KD_LABELS.eq(-100)
    base, g_base = kd_value_and_grad(lambda s: cached_word_kd(s, ids, logp, rest, KD_LABELS, 2.0), student)
    ids2, logp2, rest2 = ids.clone(), logp.clone(), rest.clone()
    ids2[pad], logp2[pad], rest2[pad] = 0, 0.0, float("-inf")  # what TeacherCache.lookup leaves there, and worse
    loss, grad = kd_value_and_grad(lambda s: cached_word_kd(s, ids2, logp2, rest2, KD_LABELS, 2.0), student)
    assert torch.equal(loss, base) and torch.equal(grad, g_base) and torch.isfinite(grad).all()
