"""Config: presets, key=value overrides, and errors that name the key."""
from __future__ import annotations

import dataclasses

import pytest

from a2d.config import ConfigError, describe_keys, load_config, preset_names, read_yaml, save_config


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


def test_each_method_saves_only_its_own_settings():
    kd = load_config("tiny-student", ["method=kd", "ckd_grouping=cc", "lambda_att=0.5"]).to_dict()
    assert {"method", "mu_kd", "kd_temperature", "loss_mixing"} <= set(kd)
    assert not {"ckd_grouping", "lambda_att", "feature_weight", "beam"} & set(kd)
    ckd = load_config("tiny-student", ["method=ckd", "ckd_grouping=cc"])
    assert ckd.to_dict()["ckd_grouping"] == "cc" and "pkd_mapping" not in ckd.to_dict()
    assert ckd.settings.ckd_grouping == ckd.ckd_grouping == "cc"
    # a train run (method None) saves the common settings only: a teacher's config.yaml has no method keys
    teacher = dataclasses.replace(load_config("tiny-teacher"), method=None).to_dict()
    assert not {"method", "ckd_grouping", "mu_kd", "aam_lr", "loss_mixing"} & set(teacher)
    assert load_config(None, base=teacher).d_model == 128


def test_saved_configs_round_trip_and_old_ones_load(tmp_path):
    cfg = load_config("tiny-student", ["method=pkd", "pkd_mapping=last", "feature_weight=2"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(None, base=read_yaml(tmp_path / "config.yaml")).to_dict() == cfg.to_dict()
    # an older version's config.yaml holds every method's keys, flat, and the retired beam
    old = {**dataclasses.replace(cfg, method=None).to_dict(), "beam": 5, "method": "a2d", "mu_kd": 0.5,
           "kl_norm": "reference", "selective_word_rate": 0.5, "feature_weight": 1.0, "pkd_mapping": "skip",
           "ckd_grouping": "sc"}
    again = load_config(None, base=old)
    assert (again.method, again.kl_norm, again.mu_kd) == ("a2d", "reference", 0.5)
    assert "beam" not in again.to_dict() and "ckd_grouping" not in again.to_dict()
    with pytest.raises(ConfigError, match="beam is no longer a setting"):
        load_config("tiny-student", ["beam=4"])
    with pytest.raises(ConfigError, match="ckd_grouping='xx': must be one of sc, cc, rc, oc"):
        load_config("tiny-student", ["method=a2d", "ckd_grouping=xx"])  # checked whatever the method
    with pytest.raises(ConfigError, match="unknown method"):
        load_config("tiny-student", ["method=nope"])


def test_choice_lists_come_from_the_components():
    from a2d.alignment import AAM_MODES
    from a2d.attention import GRANULARITIES
    from a2d.losses import ATT_KINDS, DECAY_UNITS, KIND_WEIGHTS, KL_NORMS
    from a2d.methods.a2d import A2DSettings
    from a2d.methods.ckd import CKD_GROUPINGS, CKDSettings
    from a2d.methods.pkd import PKD_MAPPINGS, PKDSettings

    choices = {f.name: f.metadata["choices"] for f in [*dataclasses.fields(A2DSettings),
                                                       *dataclasses.fields(PKDSettings),
                                                       *dataclasses.fields(CKDSettings)]}
    assert choices["aam"] is AAM_MODES and choices["att_granularity"] is GRANULARITIES
    assert choices["att_kinds"] is ATT_KINDS and ATT_KINDS == tuple(KIND_WEIGHTS)
    assert choices["kl_norm"] is KL_NORMS and choices["lambda_decay_unit"] is DECAY_UNITS
    assert choices["pkd_mapping"] is PKD_MAPPINGS and choices["ckd_grouping"] is CKD_GROUPINGS


def test_keys_are_listed_by_method():
    text = describe_keys()
    assert text.index("a2d distill:") < text.index("  method = 'a2d'") < text.index("  mu_kd = 1.0")
    assert "CKD's layer grouping (method ckd):\n  ckd_grouping = 'sc' [sc|cc|rc|oc]" in text
    assert "(methods tinybert, minilm, alp-kd, pkd, ckd):\n  feature_weight" in text
    assert "\n  beam = " not in text
