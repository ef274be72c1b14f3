"""Presets build the architectures the paper describes, with the parameter counts the formula gives."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from a2d.models import build_model, count_parameters, load_model, load_weights
from a2d.settings import load_config

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


# ---------------------------------------------------------------- weights that do not fit their config.json
@pytest.fixture(scope="module")
def hub_model(tmp_path_factory, data_root):
    """A random hub-layout Marian folder (OPUS-MT's layout) whose decoder has 4 layers."""
    from tests.hub_models import hub_folder

    return hub_folder(tmp_path_factory.mktemp("hub") / "model", decoder_layers=4)


def variant(model: Path, out: Path, config: dict | None = None, drop: str | None = None,
            add: dict | None = None) -> Path:
    """A copy of the folder ``model`` with ``config`` set in its config.json, the tensors whose names start with
    ``drop`` removed from its weights, and ``add`` (name -> tensor) added to them."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model, out)
    if config:
        settings = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**settings, **config}))
    if drop or add:
        state = load_file(out / "model.safetensors")
        state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
        state.update({k: v.detach().clone().contiguous() for k, v in (add or {}).items()})
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


MISFITS = {  # 26 tensors per decoder layer
    "config-6-layers": (dict(config={"decoder_layers": 6}),
                        r"52 tensor\(s\) missing from the weights: model\.decoder\.layers\.4\.encoder_attn\.k_proj\.bias, "),
    "config-2-layers": (dict(config={"decoder_layers": 2}),
                        r"52 tensor\(s\) in the weights that the model has no place for: model\.decoder\.layers\.2\."),
    "layer-1-missing": (dict(drop="model.decoder.layers.1."),
                        r"26 tensor\(s\) missing from the weights: model\.decoder\.layers\.1\."),
    "config-d-model-64": (dict(config={"d_model": 64}),
                          r"\d+ tensor\(s\) of another shape: model\.shared\.weight \d+x32 in the weights, \d+x64 in the "
                          r"model / model\.decoder\.layers\.0\."),
}


@pytest.mark.parametrize("name", list(MISFITS))
def test_weights_that_do_not_fit_the_config_are_refused(hub_model, tmp_path, monkeypatch, capsys, name):
    """Hugging Face fills what is missing (or of another shape) with random values and says so only in a log a2d
    keeps quiet: a2d translate printed garbage and exited 0. Now: one line naming the folder and the tensors."""
    from a2d.cli import main
    from a2d.utils import UserError

    changes, message = MISFITS[name]
    folder = variant(hub_model, tmp_path / name, **changes)
    with pytest.raises(UserError, match=f"^{re.escape(str(folder))}: the weights do not match its config.json: {message}"):
        load_model(folder)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Ein Hund läuft.\n".encode())))
    assert main(["translate", "--model", str(folder), "--beam", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"a2d: error: {folder}: the weights do not match")


def test_tensors_a_model_derives_are_not_asked_for(hub_model, tmp_path):
    """The output layer and the embeddings tied to the shared one, the sinusoidal position tables and a zero
    final_logits_bias may be stored or not: the model is the same either way, and nothing is reported."""
    model, _ = load_model(hub_model)
    assert not model.final_logits_bias.any()
    pad = model.config.pad_token_id
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "decoder_input_ids": torch.tensor([[pad, 8, 9]])}
    with torch.no_grad():
        expected = model.eval()(**batch).logits
    shared = model.model.shared.weight
    stored = variant(hub_model, tmp_path / "all-stored", add={
        "lm_head.weight": shared, "model.encoder.embed_tokens.weight": shared,
        "model.decoder.embed_tokens.weight": shared,
        "model.encoder.embed_positions.weight": model.model.encoder.embed_positions.weight,
        "model.decoder.embed_positions.weight": model.model.decoder.embed_positions.weight})
    no_bias = variant(hub_model, tmp_path / "no-bias", drop="final_logits_bias")
    for folder in (stored, no_bias):
        loaded, _ = load_model(folder)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**batch).logits, expected), folder.name


def test_resume_weights_of_another_shape_are_one_line(tmp_path):
    """--resume reads last/ into the model the run's settings build: another shape names the tensors too."""
    from a2d.utils import UserError

    cfg = load_config("tiny-student", ["d_model=32", "ffn_dim=64"])
    folder = tmp_path / "last"
    build_model(cfg, 100).save_pretrained(folder)
    wider = build_model(load_config("tiny-student", ["d_model=32", "ffn_dim=96"]), 100)
    with pytest.raises(UserError, match=r"last: the weights do not match this run's model: \d+ tensor\(s\) of another "
                                        r"shape: model\.decoder\.layers\.0\.fc1\.bias 64 in the weights, 96 in the model"):
        load_weights(wider, folder)


def test_every_command_refuses_a_model_that_does_not_fit(hub_model, tmp_path, capsys):
    """The teacher of distill, the caches' teachers (distill-data, with and without --cache-topk), evaluate and
    export: each loads through load_model, each says the one line and writes nothing."""
    from a2d.cli import main
    from a2d.data.prepare import prepare
    from tests.hub_models import corpus_text

    src, tgt = corpus_text(224)
    text = tmp_path / "text"
    text.mkdir()
    splits = {}
    for split, rows in (("train", slice(0, 200)), ("valid", slice(200, None))):
        for lang, lines in (("de", src[rows]), ("en", tgt[rows])):
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        splits[split] = (text / f"{split}.de", text / f"{split}.en")
    data = tmp_path / "data"
    prepare(data, splits, "de", "en", tokenizer=hub_model, log=lambda *a: None)
    bad = variant(hub_model, tmp_path / "six-layers", config={"decoder_layers": 6})
    out = tmp_path / "out"
    for argv in (["distill", "--data", data, "--teacher", bad, "--method", "kd", "--preset", "tiny-student",
                  "--out", out, "max_steps=1"],
                 ["distill-data", "--teacher", bad, "--data", data, "--out", out],
                 ["distill-data", "--teacher", bad, "--data", data, "--out", out, "--cache-topk", "4"],
                 ["evaluate", "--model", bad, "--data", data, "--split", "valid"],
                 ["export", "--model", bad, "--out", out]):
        assert main([str(a) for a in argv]) == 2, argv[0]
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{bad}: the weights do not match its config.json: 52 tensor(s) missing" in err
        assert not out.exists(), argv
