"""Token-budget batching (fairseq's ``--max-tokens``), sharding over processes, and padding into tensors.

An example's size is ``max(src_len, tgt_len) + 1``: the source gains ``</s>`` and the decoder input gains
``<s>``. A batch of ``b`` examples whose largest size is ``m`` costs ``b * m`` padded tokens on either side,
and :func:`token_batches` keeps that at or below ``max_tokens``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from a2d.data.vocab import BOS, EOS, PAD
from a2d.utils import UserError

IGNORE_INDEX = -100  # label value that the cross-entropy skips


def example_sizes(src_lens: Sequence[int] | np.ndarray, tgt_lens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Padded size of each example, shape (n,): ``max(src_len, tgt_len) + 1``."""
    src = np.asarray(src_lens, dtype=np.int64)
    tgt = np.asarray(tgt_lens, dtype=np.int64)
    if src.shape != tgt.shape or src.ndim != 1:
        raise ValueError(f"src_lens {src.shape} and tgt_lens {tgt.shape} must be 1-D and of equal length")
    return np.maximum(src, tgt) + 1


def token_batches(src_lens: Sequence[int] | np.ndarray, tgt_lens: Sequence[int] | np.ndarray, max_tokens: int,
                  shuffle: bool, seed: int, epoch: int) -> list[list[int]]:
    """Group example indices into batches of at most ``max_tokens`` padded tokens.

    Examples are ordered by (target size, source size), with ties broken at random when ``shuffle``
    (else by index); consecutive examples fill a batch while ``len(batch) * max size <= max_tokens``;
    with ``shuffle`` the order of the batches is then shuffled. All randomness comes from
    ``numpy.random.default_rng((seed, epoch))``, so the result depends only on the arguments.
    Every index in ``range(n)`` appears in exactly one batch.
    """
    sizes = example_sizes(src_lens, tgt_lens)
    if max_tokens < 1:
        raise UserError(f"max_tokens={max_tokens}: must be a positive number of tokens")
    if len(sizes) == 0:
        return []
    longest = int(sizes.max())
    if longest > max_tokens:
        raise UserError(f"max_tokens={max_tokens} is smaller than the longest example ({longest} tokens); "
                        "raise max_tokens")
    if seed < 0 or epoch < 0:
        raise UserError(f"seed={seed}, epoch={epoch}: both must be non-negative integers")
    rng = np.random.default_rng((seed, epoch))
    tie_break = rng.permutation(len(sizes)) if shuffle else np.arange(len(sizes))
    src_sizes = np.asarray(src_lens, dtype=np.int64)
    tgt_sizes = np.asarray(tgt_lens, dtype=np.int64)
    order = np.lexsort((tie_break, src_sizes, tgt_sizes))  # last key is the primary one
    batches = fill_batches(order.tolist(), sizes.tolist(), max_tokens)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def fill_batches(order: Sequence[int], sizes, max_tokens: int) -> list[list[int]]:
    """Cut ``order`` greedily into batches with ``len(batch) * max(size) <= max_tokens``.

    ``sizes[i]`` is the size of example ``i`` (a list or a dict by index). The one token batcher: training
    (:func:`token_batches`) and decoding (:class:`a2d.translator.BatchTranslator`, longest sources first) use it.
    """
    batches: list[list[int]] = []
    batch: list[int] = []
    largest = 0
    for i in order:
        new_largest = max(largest, sizes[i])
        if batch and (len(batch) + 1) * new_largest > max_tokens:
            batches.append(batch)
            batch, new_largest = [], sizes[i]
        batch.append(i)
        largest = new_largest
    if batch:
        batches.append(batch)
    return batches


def shard_batches(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """The batches of process ``rank`` out of ``world_size``: ``batches[rank::world_size]``.

    The last ``len(batches) % world_size`` batches are dropped first so that every rank gets the same
    number of batches (and takes the same number of optimizer steps); with fewer batches than processes,
    every rank gets none.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
    usable = len(batches) - len(batches) % world_size
    return batches[:usable][rank::world_size]


def collate(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = PAD, bos_id: int = BOS,
            eos_id: int = EOS) -> dict[str, torch.Tensor]:
    """Pad a list of ``(src_ids, tgt_ids)`` (no ``</s>``) into model inputs; every tensor is ``torch.long``.

    With B pairs, S = max(len(src)) + 1 and T = max(len(tgt)) + 1:

    * ``input_ids`` (B, S): src + [eos], right-padded with ``pad_id``; ``attention_mask`` (B, S): 1 on tokens;
    * ``decoder_input_ids`` (B, T): [bos] + tgt, padded with ``pad_id``; ``decoder_attention_mask`` (B, T);
    * ``labels`` (B, T): tgt + [eos], padded with -100;
    * ``ntokens`` (0-dim): the number of real labels.
    """
    if not pairs:
        raise ValueError("collate needs at least one pair")
    srcs = [list(src) for src, _ in pairs]
    tgts = [list(tgt) for _, tgt in pairs]
    s = max(map(len, srcs)) + 1
    t = max(map(len, tgts)) + 1
    input_ids = torch.tensor([x + [eos_id] + [pad_id] * (s - len(x) - 1) for x in srcs], dtype=torch.long)
    decoder_input_ids = torch.tensor([[bos_id] + y + [pad_id] * (t - len(y) - 1) for y in tgts], dtype=torch.long)
    labels = torch.tensor([y + [eos_id] + [IGNORE_INDEX] * (t - len(y) - 1) for y in tgts], dtype=torch.long)
    attention_mask = _length_mask([len(x) + 1 for x in srcs], s)
    decoder_attention_mask = _length_mask([len(y) + 1 for y in tgts], t)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels,
        "ntokens": decoder_attention_mask.sum(),
    }


def _length_mask(lengths: list[int], width: int) -> torch.Tensor:
    """(B, width) long tensor with 1 on the first ``lengths[b]`` positions of row b, 0 after."""
    return (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()


__all__ = ["token_batches", "fill_batches", "shard_batches", "collate", "example_sizes", "IGNORE_INDEX"]
