"""Token-budget batching, sharding over ranks, and collation into padded tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from a2d.data.batching import collate, fill_batches, shard_batches, token_batches
from a2d.utils import UserError


@pytest.fixture(scope="module")
def lengths():
    rng = np.random.default_rng(0)
    return rng.integers(1, 60, size=1000), rng.integers(1, 60, size=1000)


def _padded_cost(batch, src_lens, tgt_lens):
    return len(batch) * max(max(src_lens[i], tgt_lens[i]) + 1 for i in batch)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("max_tokens", [60, 256, 4096])
def test_budget_respected_and_every_example_once(lengths, shuffle, max_tokens):
    src, tgt = lengths
    batches = token_batches(src, tgt, max_tokens, shuffle=shuffle, seed=1, epoch=3)
    assert all(batch and _padded_cost(batch, src, tgt) <= max_tokens for batch in batches)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(src)))
    assert all(isinstance(i, int) for i in flat)


def test_batches_are_reasonably_full(lengths):
    src, tgt = lengths
    batches = token_batches(src, tgt, 1024, shuffle=True, seed=1, epoch=1)
    total = sum(_padded_cost(b, src, tgt) for b in batches)
    assert total > 0.8 * 1024 * (len(batches) - 1)  # sorting by size keeps padding and waste low


def test_deterministic_per_seed_and_epoch(lengths):
    src, tgt = lengths
    a = token_batches(src, tgt, 512, shuffle=True, seed=7, epoch=2)
    assert a == token_batches(src, tgt, 512, shuffle=True, seed=7, epoch=2)
    assert a != token_batches(src, tgt, 512, shuffle=True, seed=7, epoch=3)
    assert a != token_batches(src, tgt, 512, shuffle=True, seed=8, epoch=2)


def test_no_global_rng_used(lengths):
    src, tgt = lengths
    np.random.seed(0)
    a = token_batches(src, tgt, 512, shuffle=True, seed=1, epoch=1)
    np.random.seed(123)
    assert a == token_batches(src, tgt, 512, shuffle=True, seed=1, epoch=1)


def test_unshuffled_order_is_sorted_by_target_then_source():
    src = [5, 1, 3, 2, 2, 9]
    tgt = [2, 2, 1, 2, 2, 1]
    batches = token_batches(src, tgt, 1000, shuffle=False, seed=1, epoch=1)
    assert batches == [[2, 5, 1, 3, 4, 0]]
    assert token_batches(src, tgt, 1000, shuffle=False, seed=1, epoch=1) == \
        token_batches(src, tgt, 1000, shuffle=False, seed=2, epoch=9)


def test_greedy_fill_hand_made():
    # sizes max(src, tgt) + 1 = 3, 3, 5, 5, 11; order by (tgt, src) = 4, 0, 3, 1, 2
    batches = token_batches([2, 1, 4, 4, 10], [1, 2, 3, 1, 0], 12, shuffle=False, seed=1, epoch=1)
    assert batches == [[4], [0, 3], [1, 2]]  # [0, 3, 1] would cost 3 * 5 = 15 > 12


def test_fill_batches_takes_sizes_by_index():
    # decoding's use: sources longest first, sizes a dict by index; the same greedy cut as training's
    sizes = {7: 6, 2: 5, 4: 3, 0: 3, 9: 1}
    assert fill_batches([7, 2, 4, 0, 9], sizes, 12) == [[7, 2], [4, 0, 9]]
    assert fill_batches([7, 2, 4, 0, 9], sizes, 5) == [[7], [2], [4], [0], [9]]  # one over budget alone


def test_example_too_long():
    with pytest.raises(UserError, match=r"^max_tokens=16 is smaller than the longest example \(21 tokens\); "
                                        r"raise max_tokens$"):
        token_batches([3, 20], [4, 2], 16, shuffle=True, seed=1, epoch=1)


def test_empty_input():
    assert token_batches([], [], 100, shuffle=True, seed=1, epoch=1) == []


def test_shard_batches_equal_and_disjoint():
    batches = [[i] for i in range(10)]
    shards = [shard_batches(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    flat = [b[0] for s in shards for b in s]
    assert sorted(flat) == list(range(9))  # the last 10 % 3 = 1 batch is dropped
    assert shards[1] == [[1], [4], [7]]
    assert shard_batches(batches, 0, 1) == batches
    assert [shard_batches(batches[:2], r, 4) for r in range(4)] == [[], [], [], []]
    with pytest.raises(ValueError):
        shard_batches(batches, 3, 3)


def test_collate_hand_made():
    pairs = [([10, 11, 12], [20]), ([13], [21, 22, 23, 24])]
    out = collate(pairs)
    assert set(out) == {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels",
                        "ntokens"}
    assert all(t.dtype == torch.long for t in out.values())
    assert out["input_ids"].tolist() == [[10, 11, 12, 3], [13, 3, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["decoder_input_ids"].tolist() == [[2, 20, 0, 0, 0], [2, 21, 22, 23, 24]]
    assert out["decoder_attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert out["labels"].tolist() == [[20, 3, -100, -100, -100], [21, 22, 23, 24, 3]]
    assert out["ntokens"].shape == () and out["ntokens"].item() == 7


def test_collate_custom_ids_and_numpy_input():
    out = collate([(np.array([7, 8]), np.array([9]))], pad_id=1, bos_id=5, eos_id=6)
    assert out["input_ids"].tolist() == [[7, 8, 6]]
    assert out["decoder_input_ids"].tolist() == [[5, 9]]
    assert out["labels"].tolist() == [[9, 6]]
    with pytest.raises(ValueError):
        collate([])
