"""Attention-transfer losses (eq. 10-12) against plain loops on small random tensors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2d.alignment import AttentionAlignment
from a2d.losses import (KIND_WEIGHTS, attention_kl_per_query, attention_kl_reference, kind_weights,
                        label_smoothed_ce, lambda_schedule, layer_average, log_probs, word_kd)
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
        if new:  # CE first, then KD on the same logits: they share the student's log-probabilities
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


def test_log_probs_computed_once_per_logits_and_temperature():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    assert log_probs(logits) is log_probs(logits)
    assert log_probs(logits, 2.0) is not log_probs(logits)
    assert torch.allclose(log_probs(logits, 2.0), torch.log_softmax(logits / 2, -1))
