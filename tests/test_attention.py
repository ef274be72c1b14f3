"""collect_attention on a tiny real model: shapes, layer-major order, masks, rows that are distributions."""
from __future__ import annotations

import types

import pytest
import torch

from a2d.attention import AttentionMaps, collect_attention
from a2d.losses import layer_average
from a2d.models import build_model, use_attention_maps
from a2d.settings import load_config
from a2d.utils import UserError

VOCAB = 100


pytestmark = pytest.mark.usefixtures("one_thread")


def padded_batch() -> dict[str, torch.Tensor]:
    """Two sentences, the second padded on both sides (pad=0, bos=2, eos=3)."""
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]])
    tgt = [[11, 12, 13], [14]]
    t = max(len(x) for x in tgt) + 1
    dec = torch.zeros(2, t, dtype=torch.long)
    labels = torch.full((2, t), -100, dtype=torch.long)
    for i, x in enumerate(tgt):
        dec[i, : len(x) + 1] = torch.tensor([2] + x)
        labels[i, : len(x) + 1] = torch.tensor(x + [3])
    return {"input_ids": src, "attention_mask": src.ne(0).long(), "decoder_input_ids": dec,
            "decoder_attention_mask": labels.ne(-100).long(), "labels": labels,
            "ntokens": labels.ne(-100).sum()}


@pytest.fixture(scope="module")
def model_and_output():
    cfg = load_config("tiny-student", ["d_model=32", "ffn_dim=64", "encoder_layers=2", "decoder_layers=3"])
    model = build_model(cfg, VOCAB, seed=0)
    use_attention_maps(model)
    model.eval()
    batch = padded_batch()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["decoder_input_ids"],
                    decoder_attention_mask=batch["decoder_attention_mask"], output_attentions=True)
    return cfg, batch, out


def test_shapes_and_layer_major_order(model_and_output):
    cfg, batch, out = model_and_output
    maps = collect_attention(out, batch)
    b, s = batch["input_ids"].shape
    t = batch["decoder_input_ids"].shape[1]
    m = cfg.encoder_attention_heads
    assert maps["enc_self"].maps.shape == (b, 2 * m, s, s)
    assert maps["dec_self"].maps.shape == (b, 3 * m, t, t)
    assert maps["dec_cross"].maps.shape == (b, 3 * m, t, s)
    # index n*M + h is head h of layer n
    assert torch.equal(maps["enc_self"].maps[:, 1 * m + 2], out.encoder_attentions[1][:, 2])
    assert torch.equal(maps["dec_cross"].maps[:, 2 * m + 3], out.cross_attentions[2][:, 3])
    assert isinstance(maps["dec_self"], AttentionMaps)
    assert (maps["dec_self"].layers, maps["dec_self"].heads) == (3, m)


def test_masks(model_and_output):
    _, batch, out = model_and_output
    maps = collect_attention(out, batch)
    src, tgt = batch["attention_mask"].bool(), batch["decoder_attention_mask"].bool()
    assert torch.equal(maps["enc_self"].query_mask, src)
    assert torch.equal(maps["enc_self"].key_mask, src[:, None, :])
    assert torch.equal(maps["dec_cross"].query_mask, tgt)
    assert torch.equal(maps["dec_cross"].key_mask, src[:, None, :])
    t = tgt.shape[1]
    km = maps["dec_self"].key_mask
    assert km.shape == (2, t, t)
    for b in range(2):
        for q in range(t):
            for k in range(t):
                assert bool(km[b, q, k]) == (k <= q and bool(tgt[b, k]))


@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_masked_keys_zero_and_rows_sum_to_one(model_and_output, granularity):
    _, batch, out = model_and_output
    for kind, km in collect_attention(out, batch, granularity=granularity).items():
        valid = km.valid()[:, None].expand_as(km.maps)  # (B, C, Lq, Lk)
        rows = km.query_mask[:, None, :].expand(km.maps.shape[:3])
        assert km.maps[~valid & rows[..., None].expand_as(km.maps)].abs().max() < 1e-6, kind
        sums = km.maps.sum(-1)
        assert torch.allclose(sums[rows], torch.ones_like(sums[rows]), atol=1e-5), kind


def test_layer_granularity_is_head_average(model_and_output):
    cfg, batch, out = model_and_output
    heads = collect_attention(out, batch, "head")
    layers = collect_attention(out, batch, "layer")
    for kind in heads:
        assert layers[kind].maps.shape[1] == heads[kind].layers
        assert torch.allclose(layers[kind].maps, layer_average(heads[kind].maps, cfg.encoder_attention_heads))
        assert layers[kind].maps_per_layer == 1 and heads[kind].maps_per_layer == cfg.encoder_attention_heads
    # one layer by hand
    assert torch.allclose(layers["dec_self"].maps[:, 1], out.decoder_attentions[1].mean(1))


def test_kinds_subset_and_errors(model_and_output):
    _, batch, out = model_and_output
    assert set(collect_attention(out, batch, kinds=("dec_cross",))) == {"dec_cross"}
    with pytest.raises(UserError, match="unknown attention kind"):
        collect_attention(out, batch, kinds=("enc-self",))
    with pytest.raises(UserError, match="att_granularity"):
        collect_attention(out, batch, granularity="neuron")

    class NoMaps:
        encoder_attentions = None
    with pytest.raises(ValueError, match="output_attentions=True"):
        collect_attention(NoMaps(), batch, kinds=("enc_self",))


def test_stack_attention_takes_per_layer_tuples():
    """Methods that use some layers only (tinybert, minilm) stack them directly, as collect_attention does all."""
    from a2d.attention import stack_attention

    b, m, s = 2, 3, 4
    enc = tuple(torch.rand(b, m, s, s) for _ in range(2))
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    whole = collect_attention(types.SimpleNamespace(encoder_attentions=enc), batch, "head", ("enc_self",))["enc_self"]
    last = stack_attention(enc[-1:], "enc_self", batch)
    assert torch.equal(last.maps, whole.maps[:, m:]) and torch.equal(last.key_mask, whole.key_mask)
    assert (last.layers, last.heads) == (1, m)
