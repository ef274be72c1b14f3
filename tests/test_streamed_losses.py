"""The logit losses, streamed a block of positions at a time (a2d.losses), against the unstreamed formulas they
replace (the whole (B, T, V) log-softmaxes, back-propagated by autograd): values and gradients, with and without
label smoothing, at temperatures 1 and 2, with selective-KD token masks and padding, over several blocks; what
they keep for backward (the logits only, no copy); and the memory a loss adds on top of its logits."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from a2d import losses
from a2d.losses import IGNORE, cached_word_kd, label_smoothed_ce, token_nll, word_kd

V = 37
LABELS = torch.tensor([[5, 9, 2, IGNORE, IGNORE], [1, 4, 4, 7, 3], [6, IGNORE, IGNORE, IGNORE, IGNORE],
                       [36, 0, 11, 12, IGNORE]])


@pytest.fixture(autouse=True, params=["blocks of 3 positions", "one block"])
def blocks(request, monkeypatch):
    """Blocks of 3 positions (20 positions: 7 blocks, the last one short), and everything in one block."""
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 3 * V if request.param.startswith("blocks") else 10 ** 9)
    return request.param


# ---------------------------------------------------------------------------- the unstreamed formulas
def ce_reference(logits, labels, epsilon):
    mask = labels.ne(IGNORE)
    lprobs = F.log_softmax(logits.float(), dim=-1)
    nll = -lprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    smooth = -lprobs.mean(dim=-1)
    return torch.where(mask, (1.0 - epsilon) * nll + epsilon * smooth, 0.0).sum() / mask.sum().clamp(min=1)


def kd_reference(student, teacher, labels, temperature=1.0, token_mask=None):
    mask = labels.ne(IGNORE) if token_mask is None else labels.ne(IGNORE) & token_mask
    s = F.log_softmax(student.float() / temperature, dim=-1)
    with torch.no_grad():
        t = F.log_softmax(teacher.float() / temperature, dim=-1)
        p = t.exp()
        neg_entropy = (p * t).sum(-1)
    kl = neg_entropy - (p * s).sum(-1)
    return torch.where(mask, kl, 0.0).sum() / mask.sum().clamp(min=1) * temperature ** 2


def cached_kd_reference(student, ids, logp, rest, labels, temperature=1.0, token_mask=None):
    mask = labels.ne(IGNORE) if token_mask is None else labels.ne(IGNORE) & token_mask
    s = F.log_softmax(student.float() / temperature, dim=-1)
    with torch.no_grad():
        t = torch.cat([logp.float(), rest.float().unsqueeze(-1)], dim=-1)
        p = torch.where(mask.unsqueeze(-1), t.exp(), 0.0)
        neg_entropy = torch.where(p > 0, p * t, 0.0).sum(-1)
    s_top = s.gather(-1, ids.long())
    s_rest = s.scatter(-1, ids.long(), -1e30).logsumexp(-1)
    cross = (p[..., :-1] * s_top).sum(-1) + p[..., -1] * s_rest
    return torch.where(mask, neg_entropy - cross, 0.0).sum() / mask.sum().clamp(min=1) * temperature ** 2


def logits(seed, scale=3.0, dtype=torch.float32):
    """Random (4, 5, V) logits; the padded positions hold large values, which must not matter."""
    z = torch.randn(*LABELS.shape, V, generator=torch.Generator().manual_seed(seed)) * scale
    z[LABELS.eq(IGNORE)] = 50.0
    return z.to(dtype)


def value_and_grad(fn, z):
    z = z.detach().clone().requires_grad_(True)
    value = fn(z)
    grad, = torch.autograd.grad(value, z)
    return value.detach(), grad


def assert_same(new, ref, rtol=1e-5, atol=1e-7):
    (v_new, g_new), (v_ref, g_ref) = new, ref
    assert v_new.dtype == torch.float32 and v_new.dim() == 0
    torch.testing.assert_close(v_new, v_ref, rtol=rtol, atol=atol)
    assert g_new.dtype == g_ref.dtype
    torch.testing.assert_close(g_new, g_ref, rtol=rtol, atol=atol)
    assert g_new[LABELS.eq(IGNORE)].abs().max() == 0  # padding gets no gradient


TOKEN_MASK = torch.rand(*LABELS.shape, generator=torch.Generator().manual_seed(9)) > 0.4


# ---------------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_label_smoothed_ce_is_the_unstreamed_formula(epsilon):
    z = logits(1)
    assert_same(value_and_grad(lambda x: label_smoothed_ce(x, LABELS, epsilon), z),
                value_and_grad(lambda x: ce_reference(x, LABELS, epsilon), z))
    with torch.no_grad():  # as validation calls it
        torch.testing.assert_close(label_smoothed_ce(z, LABELS, epsilon), ce_reference(z, LABELS, epsilon))


@pytest.mark.parametrize("token_mask", [None, TOKEN_MASK], ids=["all tokens", "selected tokens"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_word_kd_is_the_unstreamed_formula(temperature, token_mask):
    z, teacher = logits(1), logits(2, scale=5.0)
    assert_same(value_and_grad(lambda x: word_kd(x, teacher, LABELS, temperature, token_mask), z),
                value_and_grad(lambda x: kd_reference(x, teacher, LABELS, temperature, token_mask), z))
    loss, grad = value_and_grad(lambda x: word_kd(x, teacher, LABELS, temperature, token_mask), teacher)
    assert abs(loss.item()) < 1e-5 and grad.abs().max() < 1e-6  # the teacher itself: loss 0, gradient 0


@pytest.mark.parametrize("token_mask", [None, TOKEN_MASK], ids=["all tokens", "selected tokens"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 8, V])
def test_cached_word_kd_is_the_unstreamed_formula(k, temperature, token_mask):
    z, teacher = logits(1), logits(2, scale=5.0)
    t = F.log_softmax(teacher / temperature, dim=-1)
    top = t.topk(k, dim=-1)
    rest = t.scatter(-1, top.indices, float("-inf")).logsumexp(-1)  # -inf when k = V
    ids, logp = top.indices.to(torch.int32), top.values.half()  # as a cache stores them
    assert_same(value_and_grad(lambda x: cached_word_kd(x, ids, logp, rest, LABELS, temperature, token_mask), z),
                value_and_grad(lambda x: cached_kd_reference(x, ids, logp, rest, LABELS, temperature, token_mask), z))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_ce_and_kd_on_one_logits_tensor_sum_their_gradients(temperature):
    """As a distillation step uses them: CE, KD and selective KD on the same student logits, one backward."""
    z, teacher = logits(3), logits(4, scale=5.0)

    def mixed(ce, kd):
        return lambda x: (ce(x, LABELS, 0.1) + 0.7 * kd(x, teacher, LABELS, temperature)
                          + 0.3 * kd(x, teacher, LABELS, temperature, TOKEN_MASK))

    assert_same(value_and_grad(mixed(label_smoothed_ce, word_kd), z),
                value_and_grad(mixed(ce_reference, kd_reference), z))


def test_token_nll_is_the_unstreamed_formula():
    z = logits(5)
    nll = -F.log_softmax(z, dim=-1).gather(-1, LABELS.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_nll(z, LABELS), nll * LABELS.ne(IGNORE), rtol=1e-6, atol=1e-6)
    assert token_nll(z, LABELS)[LABELS.eq(IGNORE)].abs().max() == 0


def test_half_precision_logits_give_fp32_losses_and_gradients_of_their_dtype():
    """Mixed precision: the losses run in fp32 on bf16 logits, the gradient is bf16, as .float()'s backward gives."""
    z, teacher = logits(6, dtype=torch.bfloat16), logits(7, dtype=torch.bfloat16)
    for fn, ref in ((lambda x: label_smoothed_ce(x, LABELS, 0.1), lambda x: ce_reference(x, LABELS, 0.1)),
                    (lambda x: word_kd(x, teacher, LABELS, 2.0), lambda x: kd_reference(x, teacher, LABELS, 2.0))):
        assert_same(value_and_grad(fn, z), value_and_grad(ref, z), rtol=2e-2, atol=1e-4)


def test_a_teacher_from_inference_mode():
    """The teacher runs under torch.inference_mode(): its logits cannot be saved for backward, and need not be."""
    z = logits(1)
    with torch.inference_mode():
        teacher = logits(2) * 1.0
    assert teacher.is_inference()
    assert_same(value_and_grad(lambda x: word_kd(x, teacher, LABELS, 2.0), z),
                value_and_grad(lambda x: kd_reference(x, teacher.clone(), LABELS, 2.0), z))


def test_only_the_logits_are_kept_for_backward():
    """Nothing of (positions x V) is saved for backward but the student's logits themselves (no copy): the
    unstreamed formulas kept log-probabilities and softmaxes (two to four copies)."""
    z, teacher = logits(1).requires_grad_(True), logits(2)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (label_smoothed_ce(z, LABELS, 0.1) + word_kd(z, teacher, LABELS, 2.0)
                + word_kd(z, teacher, LABELS, 2.0, TOKEN_MASK))
        ids = torch.zeros(*LABELS.shape, 4, dtype=torch.long)
        loss = loss + cached_word_kd(z, ids, torch.full(ids.shape, -2.0), torch.full(LABELS.shape, -0.5), LABELS)
    big = [t for t in saved if t.numel() >= z.numel()]
    assert big and all(t.data_ptr() == z.data_ptr() for t in big)
    loss.backward()
    assert torch.isfinite(z.grad).all()


# ---------------------------------------------------------------------------- memory beyond the logits
_PEAK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    from a2d import losses
    from a2d.losses import label_smoothed_ce, word_kd
    from test_streamed_losses import ce_reference, kd_reference

    def rss_peak():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    torch.set_num_threads(1)
    losses.CHUNK_ELEMENTS = 2 ** 18  # blocks of 1 MiB: what the structure adds, not the block size
    n, v = 1024, 16384
    g = torch.Generator().manual_seed(0)
    student = torch.randn(n, v, generator=g).requires_grad_(True)
    teacher = torch.randn(n, v, generator=g)
    labels = torch.randint(0, v, (1, n), generator=g)
    labels[0, -100:] = -100
    student.grad = torch.zeros_like(student)  # where the gradient goes: present before and after
    z = student[None]  # the logits, one tensor that both losses take (B, T, V)
    ce, kd = (label_smoothed_ce, word_kd) if sys.argv[1] == "streamed" else (ce_reference, kd_reference)
    for _ in range(2):
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_peak()
        loss = ce(z, labels, 0.1) + kd(z, teacher[None], labels, 2.0)
        loss.backward()
        del loss
    print(json.dumps({"extra": rss_peak() - before, "tensor": n * v * 4}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_ce_and_kd_add_at_most_the_gradient_to_the_logits(blocks):
    """Peak resident memory that CE + KD forward and backward add to the student's and teacher's logits and the
    gradient buffer, on (1024 x 16384) fp32 logits (64 MiB each): the streamed losses at most two tensors (the
    gradient each returns, summed into .grad), the unstreamed ones several more. A fresh process each."""
    if blocks != "blocks of 3 positions":
        pytest.skip("measured once, at the default block size")
    tests = Path(__file__).resolve().parent

    def extra(which):
        out = subprocess.run([sys.executable, "-c", _PEAK, which, str(tests)], capture_output=True, text=True,
                             check=True, timeout=300)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return result["extra"] / result["tensor"]

    streamed, unstreamed = extra("streamed"), extra("unstreamed")
    assert streamed <= 2.3, (streamed, unstreamed)
    assert unstreamed >= streamed + 1.5, (streamed, unstreamed)
