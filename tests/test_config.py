"""Config: presets, key=value overrides, and errors that name the key."""
from __future__ import annotations

import pytest

from a2d.config import ConfigError, load_config, preset_names


def test_presets_listed():
    assert {"paper-teacher", "paper-student", "paper-student-2l", "wmt-teacher", "wmt-student", "tiny-teacher",
            "tiny-student"} <= set(preset_names())


@pytest.mark.parametrize("override, key, value", [
    ("lr=3e-3", "lr", 3e-3), ("max_tokens=1024", "max_tokens", 1024), ("kl_norm=reference", "kl_norm", "reference"),
    ("lambda_att=1", "lambda_att", 1.0),
])
def test_overrides(override, key, value):
    assert getattr(load_config("tiny-student", [override]), key) == value


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown key 'nope'"), ("lr=abc", "lr='abc' is not a valid float"),
    ("max_tokens=1.5", "max_tokens='1.5' is not a valid int"), ("kl_norm=sum", "kl_norm='sum': must be one of"),
    ("dropout=1.5", "dropout=1.5: must be <="), ("lr", "key=value"), ("d_model=130", "not divisible"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config("tiny-student", [override])


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml:.*not valid YAML"):
        load_config(bad)
    unknown = tmp_path / "u.yaml"
    unknown.write_text("d_modl: 3\n")
    with pytest.raises(ConfigError, match="u.yaml: unknown key 'd_modl'"):
        load_config(unknown)


def test_presets_layer_left_to_right(tmp_path):
    cfg = load_config("paper-student+a2d-paper", ["lambda_att=0.5"])
    assert (cfg.encoder_layers, cfg.d_model) == (3, 512)  # from the model preset
    assert (cfg.kl_norm, cfg.aam, cfg.lambda_decay) == ("reference", "linear", 0.9)  # from the method preset
    assert cfg.lambda_att == 0.5  # key=value still wins
    mine = tmp_path / "mine.yaml"
    mine.write_text("d_model: 256\nencoder_attention_heads: 8\n")
    assert load_config(f"paper-student+{mine}").d_model == 256
    with pytest.raises(ConfigError, match="unknown preset 'a2d-papr'"):
        load_config("paper-student+a2d-papr")


def test_a2d_defaults_and_paper_presets():
    """The package's A2D defaults (chosen on the tiny grids' validation BLEU, README "Why these defaults") and
    the paper's settings, which stay reachable as presets."""
    tiny = load_config("tiny-student")
    assert (tiny.kl_norm, tiny.aam, tiny.lambda_att, tiny.lambda_decay, tiny.mu_kd) == \
        ("per-query", "convex", 0.1, 0.9, 1.0)
    assert load_config("paper-student").lambda_att == 1.0
    paper = load_config("paper-student+a2d-paper")
    assert (paper.kl_norm, paper.aam, paper.lambda_att) == ("reference", "linear", 1.0)
