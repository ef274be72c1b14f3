"""Attention maps as knowledge (paper section 4.1): collect them from a model's forward pass.

Each head ``m`` of layer ``n`` yields a map ``H_(m,n) = softmax(Q K^T / sqrt(d_head))`` (eq. 3),
one row per query position, a probability distribution over the key positions. An
encoder-decoder has three kinds (eq. 6-8):

* ``enc_self``  ``H^enc-self  in R^(L_src x L_src)``  (eq. 6)
* ``dec_self``  ``H^dec-self  in R^(L_tgt x L_tgt)``, causal  (eq. 7)
* ``dec_cross`` ``H^dec-cross in R^(L_tgt x L_src)``  (eq. 8; the paper writes ``L_src x L_tgt``,
  rows here are the target queries, columns the source keys)

The shapes depend on the batch, not on the model, so teacher and student maps of one kind have the
same ``(Lq, Lk)`` and differ only in how many maps there are (layers x heads).

Hugging Face outputs (``output_attentions=True``, eager attention) give, per kind, a tuple over
layers of ``(B, heads, Lq, Lk)`` post-softmax probabilities; padded keys are (numerically) 0, while
padded *query* rows are ordinary rows of garbage that a loss must mask. :func:`collect_attention`
stacks them layer-major and attaches the masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from a2d.utils import UserError

KINDS = ("enc_self", "dec_self", "dec_cross")
GRANULARITIES = ("head", "layer")

# Hugging Face output attribute of each kind.
_OUTPUT_FIELD = {"enc_self": "encoder_attentions", "dec_self": "decoder_attentions", "dec_cross": "cross_attentions"}
#: The batch key under which a teacher cache (:mod:`a2d.teacher_cache`) hands over the teacher's maps of each kind.
TEACHER_MAPS = {kind: f"teacher_maps_{kind}" for kind in KINDS}


@dataclass
class AttentionMaps:
    """All maps of one kind of attention for one model and batch.

    Attributes:
        kind: ``"enc_self"``, ``"dec_self"`` or ``"dec_cross"``.
        maps: ``(B, C, Lq, Lk)`` probabilities. With granularity ``"head"`` ``C = N*M`` (N layers,
            M heads per layer), layer-major: index ``n*M + m`` is head ``m`` of layer ``n``. With
            granularity ``"layer"`` ``C = N``: the head average of each layer (Table 4's layer-wise A2D).
        query_mask: ``(B, Lq)`` bool, True at real (non-padding) query positions.
        key_mask: ``(B, 1, Lk)`` bool (padding only: ``enc_self``, ``dec_cross``) or ``(B, Lq, Lk)``
            bool (``dec_self``: key padding and the causal mask ``k <= q``); True where a query may attend.
        layers: N, the model's layers of this kind.
        heads: M, heads per layer in the model.
        granularity: ``"head"`` or ``"layer"``.
    """

    kind: str
    maps: torch.Tensor
    query_mask: torch.Tensor
    key_mask: torch.Tensor
    layers: int
    heads: int
    granularity: str = "head"

    @property
    def n_maps(self) -> int:
        """C, the number of maps (``maps.shape[1]``)."""
        return self.maps.shape[1]

    @property
    def maps_per_layer(self) -> int:
        """M for granularity ``"head"``, 1 for ``"layer"``."""
        return self.heads if self.granularity == "head" else 1

    def valid(self) -> torch.Tensor:
        """``(B, Lq, Lk)`` bool: the cells of each map that carry attention (query real, key allowed)."""
        return self.query_mask[:, :, None] & self.key_mask


KindMaps = AttentionMaps  # alias: the maps of one kind


def _bool_mask(mask: torch.Tensor | None, b: int, length: int, device) -> torch.Tensor:
    """``(B, L)`` bool, True at real tokens; all True when ``mask`` is None."""
    if mask is None:
        return torch.ones(b, length, dtype=torch.bool, device=device)
    return mask.to(device=device).bool()


def collect_attention(outputs, batch: dict[str, torch.Tensor], granularity: str = "head",
                      kinds: tuple[str, ...] | list[str] = KINDS) -> dict[str, AttentionMaps]:
    """Stack a forward pass's attention maps per kind (eq. 6-8), with padding and causal masks.

    Args:
        outputs: a ``Seq2SeqLMOutput`` of a forward pass with ``output_attentions=True`` (eager
            attention). ``encoder_attentions`` / ``decoder_attentions`` / ``cross_attentions`` are
            tuples over layers of ``(B, M, Lq, Lk)``.
        batch: ``input_ids`` ``(B, S)``, ``attention_mask`` ``(B, S)``, ``decoder_input_ids``
            ``(B, T)``, ``decoder_attention_mask`` ``(B, T)`` (masks 1 at real tokens; when a mask is
            missing, every position counts as real).
        granularity: ``"head"`` -> ``maps`` ``(B, N*M, Lq, Lk)`` layer-major; ``"layer"`` -> the head
            average of each layer, ``(B, N, Lq, Lk)`` (rows stay distributions).
        kinds: which of ``enc_self``, ``dec_self``, ``dec_cross`` to collect.

    Returns:
        ``{kind: AttentionMaps}`` with ``enc_self`` maps ``(B, C, S, S)``, ``dec_self`` ``(B, C, T, T)``
        and ``dec_cross`` ``(B, C, T, S)``.
    """
    if granularity not in GRANULARITIES:
        raise UserError(f"att_granularity={granularity!r}: must be one of {', '.join(GRANULARITIES)}")
    for kind in kinds:
        if kind not in KINDS:
            raise UserError(f"unknown attention kind {kind!r} (choose from {', '.join(KINDS)})")
    result: dict[str, AttentionMaps] = {}
    for kind in kinds:
        per_layer = getattr(outputs, _OUTPUT_FIELD[kind], None)
        if not per_layer or any(a is None for a in per_layer):
            raise ValueError(f"the model output has no {_OUTPUT_FIELD[kind]}: run the forward pass with "
                             "output_attentions=True and the eager attention kernel (models.use_attention_maps)")
        result[kind] = stack_attention(tuple(per_layer), kind, batch, granularity)
    return result


def stack_attention(per_layer: tuple[torch.Tensor, ...], kind: str, batch: dict[str, torch.Tensor],
                    granularity: str = "head") -> AttentionMaps:
    """The maps of some layers of one kind, ``per_layer`` a tuple of ``(B, M, Lq, Lk)``, stacked layer-major
    with their masks (as :func:`collect_attention` does for all the layers of a forward pass)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: must be one of {', '.join(GRANULARITIES)}")
    if kind not in KINDS:
        raise ValueError(f"unknown attention kind {kind!r} (choose from {', '.join(KINDS)})")
    layers, heads = len(per_layer), per_layer[0].shape[1]
    maps = torch.stack(tuple(per_layer), dim=1)  # (B, N, M, Lq, Lk)
    b, _, _, lq, lk = maps.shape
    return _with_masks(kind, maps.reshape(b, layers * heads, lq, lk), batch, layers, heads, granularity)


def cached_attention(batch: dict[str, torch.Tensor], kind: str, layers: int, heads: int,
                     granularity: str = "head") -> AttentionMaps:
    """The teacher's maps of one kind as a teacher cache gave them with the batch (``batch[TEACHER_MAPS[kind]]``,
    ``(B, layers*heads, Lq, Lk)`` layer-major, 0 outside each example's real cells), with the batch's masks,
    as :func:`stack_attention` gives a live teacher's (the padding cells differ; every mask hides them)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: must be one of {', '.join(GRANULARITIES)}")
    maps = batch[TEACHER_MAPS[kind]]
    if maps.shape[1] != layers * heads:
        raise ValueError(f"{kind}: the cache gave {maps.shape[1]} maps, the teacher has {layers} x {heads}")
    return _with_masks(kind, maps, batch, layers, heads, granularity)


def _with_masks(kind: str, maps: torch.Tensor, batch: dict[str, torch.Tensor], layers: int, heads: int,
                granularity: str) -> AttentionMaps:
    """``maps`` ``(B, N*M, Lq, Lk)`` layer-major, at ``granularity``, with the batch's masks of ``kind``."""
    b, _, lq, lk = maps.shape
    if granularity == "layer":
        maps = maps.reshape(b, layers, heads, lq, lk).mean(dim=2)
    if kind == "enc_self":
        src = _bool_mask(batch.get("attention_mask"), b, lq, maps.device)
        query_mask, key_mask = src, src[:, None, :]
    else:
        tgt = _bool_mask(batch.get("decoder_attention_mask"), b, lq, maps.device)
        query_mask = tgt
        if kind == "dec_self":
            causal = torch.ones(lq, lk, dtype=torch.bool, device=maps.device).tril()
            key_mask = tgt[:, None, :] & causal[None]
        else:
            src = _bool_mask(batch.get("attention_mask"), b, lk, maps.device)
            key_mask = src[:, None, :]
    if query_mask.shape != (b, lq) or key_mask.shape[-1] != lk:
        raise ValueError(f"{kind}: masks {tuple(query_mask.shape)}/{tuple(key_mask.shape)} do not fit "
                         f"maps {tuple(maps.shape)}")
    return AttentionMaps(kind=kind, maps=maps, query_mask=query_mask, key_mask=key_mask,
                         layers=layers, heads=heads, granularity=granularity)


__all__ = ["AttentionMaps", "KindMaps", "KINDS", "GRANULARITIES", "TEACHER_MAPS", "collect_attention",
           "stack_attention", "cached_attention"]
