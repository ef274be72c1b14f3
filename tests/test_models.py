"""Presets build the architectures the paper describes, with the parameter counts the formula gives."""
from __future__ import annotations

import pytest
import torch

from a2d.config import load_config
from a2d.models import build_model, count_parameters, load_model, load_weights

V = 8000


def expected_parameters(layers_enc, layers_dec, d, ffn, vocab=V):
    """Post-norm Transformer with shared tied embeddings and sinusoidal (frozen) positions."""
    attn = 4 * (d * d + d)
    ln = 2 * d
    ff = d * ffn + ffn + ffn * d + d
    enc = attn + ln + ff + ln
    dec = attn + ln + attn + ln + ff + ln
    return vocab * d + layers_enc * enc + layers_dec * dec


@pytest.mark.parametrize("preset, shape", [
    ("paper-teacher", (6, 6, 4, 512, 1024)),
    ("paper-student", (3, 3, 4, 512, 1024)),
    ("paper-student-2l", (2, 2, 4, 512, 1024)),
    ("wmt-teacher", (12, 12, 8, 512, 2048)),
    ("wmt-student", (4, 4, 8, 512, 2048)),
    ("tiny-teacher", (4, 4, 4, 128, 512)),
    ("tiny-student", (2, 2, 4, 128, 512)),
])
def test_presets_build_expected_shapes(preset, shape):
    enc, dec, heads, d, ffn = shape
    model = build_model(load_config(preset), V)
    c = model.config
    assert (c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.d_model, c.encoder_ffn_dim) == shape
    assert count_parameters(model) == expected_parameters(enc, dec, d, ffn)
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()  # tied
    assert not model.model.encoder.embed_positions.weight.requires_grad  # sinusoidal, fixed


def test_post_norm_layers():
    model = build_model(load_config("tiny-student"), 100)
    layer = model.model.encoder.layers[0]
    x = torch.randn(1, 5, 128)
    out = layer(x, attention_mask=None)
    out = out[0] if isinstance(out, tuple) else out
    # post-norm: the layer output is the output of a LayerNorm (zero mean, unit variance per position)
    assert torch.allclose(out.mean(-1), torch.zeros(1, 5), atol=1e-4)


def test_fairseq_init_matches_xavier_and_keeps_ties():
    d, ffn = 128, 512
    model = build_model(load_config("tiny-student"), V, seed=3)  # init=fairseq is the default
    layer = model.model.decoder.layers[0]

    def xavier_std(fan_in, fan_out, gain=1.0):  # std of U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
        return gain * (6 / (fan_in + fan_out)) ** 0.5 / 3 ** 0.5

    for weight, want in [(layer.self_attn.q_proj.weight, xavier_std(d, d, 2 ** -0.5)),
                         (layer.encoder_attn.v_proj.weight, xavier_std(d, d, 2 ** -0.5)),
                         (layer.self_attn.out_proj.weight, xavier_std(d, d)),
                         (layer.fc1.weight, xavier_std(d, ffn)), (layer.fc2.weight, xavier_std(ffn, d))]:
        assert abs(weight.std().item() - want) < 0.05 * want
    assert abs(layer.fc1.weight).max().item() <= (6 / (d + ffn)) ** 0.5 + 1e-6  # uniform, bounded
    assert layer.fc1.bias.abs().sum() == 0 and layer.self_attn.k_proj.bias.abs().sum() == 0
    emb = model.model.shared.weight
    assert abs(emb.std().item() - d ** -0.5) < 0.05 * d ** -0.5
    assert emb[model.config.pad_token_id].abs().sum() == 0
    assert model.lm_head.weight.data_ptr() == emb.data_ptr()  # still tied
    assert torch.equal(layer.final_layer_norm.weight, torch.ones(d))
    normal = build_model(load_config("tiny-student", ["init=normal"]), V, seed=3).model.decoder.layers[0]
    assert abs(normal.fc2.weight.std().item() - d ** -0.5) < 0.05 * d ** -0.5  # Hugging Face's scheme


def test_student_heads_can_differ_from_teacher():
    model = build_model(load_config("paper-student", ["encoder_attention_heads=8", "decoder_attention_heads=8"]), V)
    assert model.config.encoder_attention_heads == 8


def test_save_load_round_trip(tmp_path):
    from a2d.data.vocab import train_sentencepiece, Vocabulary
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"ein Hund läuft {i} mal über die Wiese" for i in range(200)))
    train_sentencepiece([text], tmp_path, vocab_size=60)
    vocab = Vocabulary(tmp_path / "sentencepiece.model")
    model = build_model(load_config("tiny-student", ["d_model=32", "ffn_dim=64"]), len(vocab))
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    vocab.save(folder)
    loaded, v2 = load_model(folder)
    assert len(v2) == len(vocab)
    assert not loaded.model.decoder.embed_positions.weight.requires_grad
    other = build_model(load_config("tiny-student", ["d_model=32", "ffn_dim=64"]), len(vocab), seed=7)
    load_weights(other, folder)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
