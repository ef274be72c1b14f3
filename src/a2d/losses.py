"""Loss functions, each a pure function of tensors. Shapes: B batch, T target length, V vocabulary.

Every loss is computed in fp32 whatever the model's precision, and is a mean over the real
(non-padding) target tokens of the batch, so its scale does not depend on how many sentences
or how much padding a batch holds.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from a2d.utils import UserError

IGNORE = -100  # label of padded target positions


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` over the vocabulary in fp32, (B, T, V): a full (B, T, V) tensor.

    The losses below do not build it: they stream over the vocabulary a block of positions at a time
    (:data:`CHUNK_ELEMENTS`); this is for inspection and small tensors.
    """
    x = logits.float()
    return F.log_softmax(x if temperature == 1.0 else x / temperature, dim=-1)


# --------------------------------------------------------------------------------------------------
# The logit losses, streamed. With a 58k vocabulary one (tokens x V) fp32 tensor of a 4096-token batch is
# 0.95 GB; log-softmaxing the student's and the teacher's logits whole, and back-propagating through that,
# kept several such copies at once. Each loss here is a torch.autograd.Function that keeps only the logits
# it was given (no copy) and computes its value, and in backward its gradient, a block of positions at a
# time: beyond the logits, a loss holds one block's temporaries and, in backward, the (tokens x V) gradient
# it returns. The gradients are the closed forms of the formulas in the docstrings (those of their
# log_softmax / gather / sum arithmetic), in fp32, cast to the logits' dtype.

#: Floats in one block of positions x vocabulary that the logit losses compute at once (16 MiB of fp32):
#: ``max(1, CHUNK_ELEMENTS // V)`` positions per block.
CHUNK_ELEMENTS = 2 ** 22


def _blocks(rows: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (..., V) as (N, V) rows (a view of contiguous logits, as a model's are; a copy otherwise)."""
    return x.reshape(-1, x.shape[-1])


def _scaled(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """A block of logits in fp32, divided by the temperature (as :func:`log_probs`)."""
    z = z.float()
    return z if temperature == 1.0 else z / temperature


def _grad_rows(logits: torch.Tensor, grad_output: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor,
               block_grad) -> torch.Tensor:
    """The gradient with respect to ``logits`` (..., V), of their shape and dtype, filled block by block:
    ``block_grad(sl)`` (fp32, for the rows ``sl`` of the logits as (N, V)) times ``grad_output * scale`` on the
    rows of ``mask`` (N,), 0 on the others (whatever the padded rows hold).

    Returned whole, not as a view: autograd then sums the gradients of several losses on one logits tensor in
    place (a view's storage is shared with its base, which would cost one more (N, V) tensor)."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    rows = grad.view(-1, logits.shape[-1])
    factor = grad_output.float() * scale
    for sl in _blocks(*rows.shape):
        g = block_grad(sl).mul_(factor)
        rows[sl] = g.masked_fill_(~mask[sl].unsqueeze(-1), 0.0)
    return grad


class _SmoothedCE(torch.autograd.Function):
    """:func:`label_smoothed_ce`'s sum over the real tokens divided by their number; see there."""

    @staticmethod
    def forward(ctx, logits, labels, epsilon):
        z, y = _rows(logits), labels.reshape(-1)
        mask = y.ne(IGNORE)
        y = y.clamp(min=0).unsqueeze(-1)
        n = mask.sum().clamp(min=1)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for sl in _blocks(*z.shape):
            x = z[sl].float()
            lse = x.logsumexp(-1)
            nll = lse - x.gather(-1, y[sl]).squeeze(-1)  # -log p_y
            smooth = lse - x.mean(-1)  # -mean_v log p_v
            total = total + torch.where(mask[sl], (1.0 - epsilon) * nll + epsilon * smooth, 0.0).sum()
        ctx.save_for_backward(logits, labels)
        ctx.epsilon = epsilon
        return total / n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        logits, labels = ctx.saved_tensors
        eps = ctx.epsilon
        z, y = _rows(logits), labels.reshape(-1)
        mask = y.ne(IGNORE)
        y = y.clamp(min=0).unsqueeze(-1)
        vocab = z.shape[1]

        def block_grad(sl):  # d/dz [(1 - eps) * nll + eps * smooth] = p - (1 - eps) * onehot(y) - eps / V
            g = torch.softmax(z[sl].float(), dim=-1)
            if eps:
                g.sub_(eps / vocab)
            return g.scatter_add_(-1, y[sl], torch.full(y[sl].shape, eps - 1.0, dtype=g.dtype, device=g.device))

        return _grad_rows(logits, grad_output, 1.0 / mask.sum().clamp(min=1), mask, block_grad), None, None


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Label-smoothed cross-entropy (Szegedy et al. 2016, fairseq's formula), mean per target token.

    logits (B, T, V); labels (B, T) with ``IGNORE`` at padding.
    ``(1 - eps) * nll + eps / V * sum_v -log p_v``, with ``log p = log_softmax(logits)`` in fp32, computed a
    block of positions at a time (no (B, T, V) copy is kept; the gradient is ``p - (1 - eps) * onehot - eps / V``
    per real token, over their number).
    """
    return _SmoothedCE.apply(logits, labels, float(epsilon))


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain negative log-likelihood per target token (B, T), 0 at padding: ``logsumexp(z) - z_y`` in fp32, a
    block of positions at a time."""
    mask = labels.ne(IGNORE)
    z, y = _rows(logits), labels.reshape(-1).clamp(min=0).unsqueeze(-1)
    parts = []
    for sl in _blocks(*z.shape):
        x = z[sl].float()
        parts.append(x.logsumexp(-1) - x.gather(-1, y[sl]).squeeze(-1))
    nll = torch.cat(parts) if parts else z.new_zeros(0, dtype=torch.float32)
    return nll.view(labels.shape) * mask


def _kd_mask(labels: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    mask = labels.ne(IGNORE)
    return mask if token_mask is None else mask & token_mask


class _WordKD(torch.autograd.Function):
    """:func:`word_kd`'s KL summed over the tokens of ``mask`` (N,), over their number, times T^2; see there.

    The teacher's logits are a constant kept on ``ctx`` (no copy, and an inference-mode tensor cannot be saved
    for backward), dropped once backward has used them."""

    @staticmethod
    def forward(ctx, student, teacher, mask, temperature):
        zs, zt = _rows(student), _rows(teacher)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for sl in _blocks(*zs.shape):
            s = F.log_softmax(_scaled(zs[sl], temperature), dim=-1)
            t = F.log_softmax(_scaled(zt[sl], temperature), dim=-1)
            p = t.exp()
            neg_entropy = torch.where(p > 0, p * t, 0.0).sum(-1)  # 0 * log 0 = 0
            total = total + torch.where(mask[sl], neg_entropy - (p * s).sum(-1), 0.0).sum()
        ctx.save_for_backward(student, mask)
        ctx.teacher, ctx.temperature = teacher, temperature
        return total / mask.sum().clamp(min=1) * temperature ** 2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        student, mask = ctx.saved_tensors
        teacher, temperature = ctx.teacher, ctx.temperature
        ctx.teacher = None
        zs, zt = _rows(student), _rows(teacher)

        def block_grad(sl):  # d/dz_S of -sum_v p_v log q_v(z_S / T) = (sum(p) q - p) / T
            p = F.softmax(_scaled(zt[sl], temperature), dim=-1)
            q = F.softmax(_scaled(zs[sl], temperature), dim=-1)
            return q.mul_(p.sum(-1, keepdim=True)).sub_(p)

        grad = _grad_rows(student, grad_output, temperature / mask.sum().clamp(min=1), mask, block_grad)
        return grad, None, None, None


def word_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 1.0, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Word-level KD (Hinton et al. 2015): ``T^2 * KL(p_T^(1/T) || p_S^(1/T))`` per target token.

    logits (B, T, V); labels (B, T) mark the real tokens; ``token_mask`` (B, T) bool narrows the
    tokens that take part (selective KD). Mean over the tokens that take part.
    ``KL = sum_v p_T (log p_T - log p_S)``, log-softmaxes in fp32, a block of positions at a time (no (B, T, V)
    copy is kept); the teacher's side is a constant (no gradient reaches its logits). The gradient with respect
    to the student's logits is ``T * (q_S - p_T)`` per token that takes part, over their number.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ")
    mask = _kd_mask(labels, token_mask).reshape(-1)
    return _WordKD.apply(student_logits, teacher_logits.detach(), mask, float(temperature))


# --------------------------------------------------------------------------------------------------
# Word-level KD from a teacher cache (a2d distill-data --cache-topk K, :mod:`a2d.teacher_cache`).

#: The keys a batch carries when the teacher's distributions come from a cache (filled by
#: :meth:`a2d.teacher_cache.TeacherCache.lookup`): (B, T, K) token ids, (B, T, K) fp32 tempered
#: log-probabilities of those ids, (B, T) fp32 tempered log-mass of the rest of the vocabulary.
IDS_KEY, LOGP_KEY, REST_KEY = "kd_topk_ids", "kd_topk_logp", "kd_rest_logp"
#: What the student's top-K log-probabilities are replaced with before the log-sum-exp of its rest mass: finite,
#: so that with K = V (nothing left) the rest is a large negative number, not -inf, and no NaN reaches the gradient.
_MASKED = -1e30


class _CachedWordKD(torch.autograd.Function):
    """:func:`cached_word_kd` from the student's logits, the top-K ids (N, K), the teacher's bucket probabilities
    ``p`` (N, K + 1, 0 on the rows that take no part) and their ``sum p log p`` (N,); see there."""

    @staticmethod
    def _student_side(z: torch.Tensor, ids: torch.Tensor, temperature: float):
        """``s`` (log_softmax(z / T), a block), ``s`` at the top-K ids, and ``s_rest`` (finite)."""
        s = F.log_softmax(_scaled(z, temperature), dim=-1)
        s_top = s.gather(-1, ids)
        s_rest = s.scatter(-1, ids, _MASKED).logsumexp(-1)
        return s, s_top, s_rest

    @staticmethod
    def forward(ctx, student, ids, p, neg_entropy, mask, temperature):
        zs = _rows(student)
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for sl in _blocks(*zs.shape):
            _, s_top, s_rest = _CachedWordKD._student_side(zs[sl], ids[sl], temperature)
            cross = (p[sl, :-1] * s_top).sum(-1) + p[sl, -1] * s_rest
            total = total + torch.where(mask[sl], neg_entropy[sl] - cross, 0.0).sum()
        ctx.save_for_backward(student, ids, p, mask)
        ctx.temperature = temperature
        return total / mask.sum().clamp(min=1) * temperature ** 2

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        student, ids, p, mask = ctx.saved_tensors
        temperature = ctx.temperature
        zs = _rows(student)

        def block_grad(sl):
            # d/dx of -(sum_k p_k s_k + p_rest s_rest), x = z / T, q = softmax(x):
            # sum(p) q_v - p_v [v in top-K] - p_rest exp(s_v - s_rest) [v not in top-K]
            s, _, s_rest = _CachedWordKD._student_side(zs[sl], ids[sl], temperature)
            rest_share = (s - s_rest.unsqueeze(-1)).exp_().scatter_(-1, ids[sl], 0.0)
            g = s.exp_().mul_(p[sl].sum(-1, keepdim=True))
            g.scatter_add_(-1, ids[sl], -p[sl, :-1])
            return g.sub_(rest_share.mul_(p[sl, -1:]))

        grad = _grad_rows(student, grad_output, temperature / mask.sum().clamp(min=1), mask, block_grad)
        return grad, None, None, None, None, None


def cached_word_kd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor,
                   rest_logp: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                   token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Word-level KD against a teacher cache: ``T^2 * KL`` over K + 1 buckets per target token.

    The buckets are the teacher's top-K token ids and one "rest of the vocabulary" bucket. With ``t`` the
    teacher's tempered log-probabilities (``log_softmax(z_T / T)``, cached at this ``T``) and ``s`` the
    student's (``log_softmax(z_S / T)``, :func:`log_probs`)::

        t_rest = log sum_{v not in top-K} exp(t_v)           (cached)
        s_rest = log sum_{v not in top-K} exp(s_v)           (the student's own mass outside the teacher's top K)
        L_KD   = T^2 * [ sum_{k in top-K} e^t_k (t_k - s_k) + e^t_rest (t_rest - s_rest) ]

    Nothing is renormalised: the K + 1 teacher buckets sum to 1, so a student equal to the teacher is a
    minimum (loss 0, gradient 0) for any K, and with K = V the rest bucket is empty and this is
    :func:`word_kd` exactly. ``s_rest`` is a log-sum-exp of ``s`` with the top-K ids set to a large finite
    negative number (finite at K = V too, where ``e^t_rest`` is 0).

    student_logits (B, T, V); topk_ids (B, T, K) integer ids; topk_logp (B, T, K) and rest_logp (B, T) the
    cached teacher side (any float dtype, -inf allowed; padded positions any finite value or -inf); labels
    (B, T) mark the real tokens; ``token_mask`` (B, T) bool narrows the tokens that take part (selective KD).
    Mean over the tokens that take part, times ``T^2``, fp32, as :func:`word_kd`; a block of positions at a
    time, as it (no (B, T, V) copy is kept).
    """
    mask = _kd_mask(labels, token_mask)
    with torch.no_grad():  # the teacher's side is a constant
        ids = topk_ids.long().reshape(-1, topk_ids.shape[-1])
        t = torch.cat([topk_logp.float(), rest_logp.float().unsqueeze(-1)], dim=-1)  # (B, T, K + 1)
        p = torch.where(mask.unsqueeze(-1), t.exp(), 0.0)  # padding and unselected tokens take no part
        neg_entropy = torch.where(p > 0, p * t, 0.0).sum(-1)  # (B, T); 0 * log 0 = 0 (an empty rest bucket)
    return _CachedWordKD.apply(student_logits, ids, p.reshape(-1, p.shape[-1]), neg_entropy.reshape(-1),
                               mask.reshape(-1), float(temperature))


def kd_loss(student_logits: torch.Tensor, teacher, batch: dict, temperature: float = 1.0,
            token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The word-KD term of a batch: from the cache when ``batch`` carries it (:data:`IDS_KEY`, ...,
    :func:`cached_word_kd`), else from the teacher's live logits (:func:`word_kd`)."""
    if IDS_KEY in batch:
        return cached_word_kd(student_logits, batch[IDS_KEY], batch[LOGP_KEY], batch[REST_KEY], batch["labels"],
                              temperature, token_mask)
    if teacher is None or getattr(teacher, "logits", None) is None:
        raise ValueError("word-level KD needs the teacher's logits or a kd_cache")
    return word_kd(student_logits, teacher.logits.detach(), batch["labels"], temperature, token_mask)


# --------------------------------------------------------------------------------------------------
# Attention transfer (Align-to-Distill, paper section 4.2.2). Maps are (B, C, Lq, Lk): C maps of one
# kind (enc_self, dec_self or dec_cross), Lq query positions, Lk key positions.

# Weight of each kind's loss in L_att, per ``att_kinds`` setting. "all" is eq. 11,
# L_att = L_enc-self + (L_dec-self + L_dec-cross) / 2; Table 5 gives a single decoder kind weight 1.
KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "all": {"enc_self": 1.0, "dec_self": 0.5, "dec_cross": 0.5},
    "enc-self": {"enc_self": 1.0},
    "dec-all": {"dec_self": 0.5, "dec_cross": 0.5},
    "dec-self": {"dec_self": 1.0},
    "dec-cross": {"dec_cross": 1.0},
}


#: The ``att_kinds`` choices.
ATT_KINDS = tuple(KIND_WEIGHTS)
#: How the attention KL is normalised (``kl_norm``): :func:`attention_kl_per_query` or :func:`attention_kl_reference`.
KL_NORMS = ("per-query", "reference")
#: What lambda decays per (:func:`lambda_schedule`'s ``unit``).
DECAY_UNITS = ("epoch", "update")


def kind_weights(att_kinds: str) -> dict[str, float]:
    """``KIND_WEIGHTS[att_kinds]`` (eq. 11 / Table 5), or a :class:`~a2d.utils.UserError` naming the choices."""
    if att_kinds not in KIND_WEIGHTS:
        raise UserError(f"att_kinds={att_kinds!r}: must be one of {', '.join(KIND_WEIGHTS)}")
    return dict(KIND_WEIGHTS[att_kinds])


def attention_kl_reference(teacher: torch.Tensor, intermediate: torch.Tensor) -> torch.Tensor:
    """Eq. 10 with the authors' arithmetic (kept for comparison; ``kl_norm=reference``).

    teacher, intermediate ``(B, C, Lq, Lk)``. Each whole map is flattened to ``Lq*Lk`` cells and
    ``log_softmax`` is applied to BOTH sides (one distribution per map, not per query row; a softmax
    of values in [0, 1] is close to uniform), then ``kl_div(log I, log T, log_target=True,
    reduction="sum")``: ``sum_{b,c,cell} T (log T - log I)``. No masking (padding cells take part),
    no normalisation (the scale grows with the batch size and the squared lengths). fp32.
    """
    if teacher.shape != intermediate.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and intermediate {tuple(intermediate.shape)} maps differ")
    t = F.log_softmax(teacher.float().flatten(2), dim=-1)
    i = F.log_softmax(intermediate.float().flatten(2), dim=-1)
    return F.kl_div(i, t, log_target=True, reduction="sum")


def attention_kl_per_query(teacher: torch.Tensor, intermediate: torch.Tensor, query_mask: torch.Tensor,
                           key_mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 10 as a per-query-row KL, masked, per-token scale (``kl_norm=per-query``, the default).

    Args:
        teacher: ``(B, C, Lq, Lk)`` teacher maps ``H^T_c`` (probabilities).
        intermediate: ``(B, C, Lq, Lk)`` AAM outputs ``H^I_c`` (eq. 9).
        query_mask: ``(B, Lq)`` bool, True at real query positions.
        key_mask: bool, broadcastable to ``(B, Lq, Lk)`` (e.g. ``(B, 1, Lk)`` padding, or
            ``(B, Lq, Lk)`` padding & causal), True where a query may attend.
        eps: floor of the intermediate cells before renormalising.

    Every valid query row is treated as a distribution over its valid keys: the intermediate row
    is clamped at ``eps`` and renormalised over the valid keys (so a linear AAM, whose output may be
    negative or unnormalised, also works; for a convex AAM this is a no-op up to ``eps``); the
    teacher row is renormalised over the valid keys likewise. The loss is
    ``sum_{b, valid q} sum_c KL(T_{b,c,q,:} || I_{b,c,q,:}) / #valid query positions``: summed over
    the C maps and keys, averaged over the real query tokens of the batch, so its scale does not
    depend on how many sentences or how much padding the batch holds. Padded query rows and
    masked keys contribute nothing, whatever values they hold. fp32.

    Returns a 0-dim fp32 tensor.
    """
    if teacher.shape != intermediate.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and intermediate {tuple(intermediate.shape)} maps differ")
    b, _, lq, lk = teacher.shape
    valid = (query_mask.bool()[:, :, None] & key_mask.bool()).expand(b, lq, lk)[:, None]  # (B, 1, Lq, Lk)
    zero = teacher.new_zeros((), dtype=torch.float32)
    t = torch.where(valid, teacher.float().clamp(min=0.0), zero)
    t = t / t.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    i = torch.where(valid, intermediate.float().clamp(min=eps), zero)
    i = i / i.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    log_i = torch.log(torch.where(valid, i, torch.ones((), dtype=i.dtype, device=i.device)))
    kl = torch.xlogy(t, t) - t * log_i  # 0 wherever t == 0 (masked cells included)
    return kl.sum() / query_mask.bool().sum().clamp(min=1)


def layer_average(maps: torch.Tensor, heads_per_layer: int) -> torch.Tensor:
    """Layer-wise maps (Table 4): ``(B, N*M, Lq, Lk)`` layer-major -> ``(B, N, Lq, Lk)``, each layer's M heads averaged."""
    b, nm, lq, lk = maps.shape
    if heads_per_layer < 1 or nm % heads_per_layer:
        raise ValueError(f"{nm} maps cannot be split into layers of {heads_per_layer} heads")
    return maps.reshape(b, nm // heads_per_layer, heads_per_layer, lq, lk).mean(dim=2)


def lambda_schedule(lambda_att: float, decay: float, unit: str, epoch: int, update: int,
                    updates_per_epoch: int | None = None) -> float:
    """The weight ``lambda`` of ``L_att`` in eq. 12, decayed exponentially (Dynamic KD style).

    * ``unit="epoch"`` (the paper and the authors' code): ``lambda_att * decay ** (epoch - 1)``, with
      ``epoch`` counted from 1; constant within an epoch.
    * ``unit="update"``: a smooth version. With ``updates_per_epoch`` given,
      ``lambda_att * decay ** (update / updates_per_epoch)`` (the same decay per epoch as above,
      spread over the updates; ``update`` counted from 0). Without it,
      ``lambda_att * decay ** update``: ``decay`` is then a per-update rate and should be very close
      to 1 (0.9 per update leaves ~3e-5 of lambda after 100 updates).
    """
    if unit == "epoch":
        return float(lambda_att * decay ** max(epoch - 1, 0))
    if unit == "update":
        if updates_per_epoch:
            return float(lambda_att * decay ** (max(update, 0) / updates_per_epoch))
        return float(lambda_att * decay ** max(update, 0))
    raise UserError(f"lambda_decay_unit={unit!r}: must be {' or '.join(DECAY_UNITS)}")
