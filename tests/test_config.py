"""Config: presets, key=value overrides, each method's own settings, and errors that name the key."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from a2d import cli
from a2d.config import ACTIVATIONS, ConfigError, preset_names, read_yaml, save_config
from a2d.methods import METHODS
from a2d.methods.a2d import A2DSettings
from a2d.methods.kd import WordKD, WordKDSettings
from a2d.models import build_model
from a2d.settings import describe_keys, load_config


def test_presets_listed():
    assert {"paper-teacher", "paper-student", "paper-student-2l", "wmt-teacher", "wmt-student", "tiny-teacher",
            "tiny-student"} <= set(preset_names())


@pytest.mark.parametrize("override, key, value", [
    ("lr=3e-3", "lr", 3e-3), ("max_tokens=1024", "max_tokens", 1024),
])
def test_overrides(override, key, value):
    assert getattr(load_config("tiny-student", [override]), key) == value


@pytest.mark.parametrize("override, key, value", [("kl_norm=reference", "kl_norm", "reference"),
                                                  ("lambda_att=1", "lambda_att", 1.0)])
def test_method_overrides_go_to_the_methods_settings(override, key, value):
    cfg = load_config("tiny-student", [override])  # method a2d, the default
    assert type(cfg.settings) is A2DSettings and getattr(cfg.settings, key) == value
    assert not hasattr(cfg, key)  # the config does not answer for a method's keys


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown key 'nope'"), ("lr=abc", "lr='abc' is not a valid float"),
    ("max_tokens=1.5", "max_tokens='1.5' is not a valid int"), ("kl_norm=sum", "kl_norm='sum': must be one of"),
    ("dropout=1.5", "dropout=1.5: must be <="), ("lr", "key=value"), ("d_model=130", "not divisible"),
    ("lambda_att=-1", "override: lambda_att=-1.0: must be >= 0.0"),
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
    assert (cfg.encoder_layers, cfg.d_model, cfg.loss_mixing) == (3, 512, "reference")  # the two presets
    assert (cfg.settings.kl_norm, cfg.settings.aam, cfg.settings.lambda_decay) == ("reference", "linear", 0.9)
    assert cfg.settings.lambda_att == 0.5  # key=value still wins
    mine = tmp_path / "mine.yaml"
    mine.write_text("d_model: 256\nencoder_attention_heads: 8\n")
    assert load_config(f"paper-student+{mine}").d_model == 256
    with pytest.raises(ConfigError, match="unknown preset 'a2d-papr'"):
        load_config("paper-student+a2d-papr")


def test_a2d_defaults_and_paper_presets():
    """The package's A2D defaults (chosen on the tiny grids' validation BLEU, README "Why these defaults") and
    the paper's settings, which stay reachable as presets."""
    tiny = load_config("tiny-student").settings
    assert (tiny.kl_norm, tiny.aam, tiny.lambda_att, tiny.lambda_decay, tiny.mu_kd) == \
        ("per-query", "convex", 0.1, 0.9, 1.0)
    assert load_config("paper-student").settings.lambda_att == 1.0  # its a2d section
    assert load_config("paper-student", ["method=a2d-layerwise"]).settings.lambda_att == 1.0
    paper = load_config("paper-student+a2d-paper").settings
    assert (paper.kl_norm, paper.aam, paper.lambda_att) == ("reference", "linear", 1.0)


def test_a_preset_sections_settings_apply_to_that_methods_runs_only(tmp_path):
    """A student preset carries A2D's lambda in an ``a2d:`` section: an A2D run takes it, a KD run or a train run
    of the same preset leaves it (it is not theirs), and a section is checked whatever the run's method."""
    kd = load_config("paper-student", ["method=kd"])
    assert type(kd.settings) is WordKDSettings and "lambda_att" not in kd.to_dict()
    assert load_config("paper-student", train=True).to_dict()["encoder_layers"] == 3
    for text, message in [("a2d:\n  lambda_at: 1.0\n", r"s.yaml: a2d.lambda_at: not a setting of method a2d"),
                          ("a2d:\n  lambda_att: -1\n", r"s.yaml: a2d.lambda_att: lambda_att=-1.0: must be >= 0"),
                          ("kd:\n  lambda_att: 1\n", r"s.yaml: kd.lambda_att: not a setting of method kd \(a setting "
                                                     r"of methods a2d, a2d-layerwise\)"),
                          ("a2dd:\n  lambda_att: 1\n", r"s.yaml: unknown key 'a2dd' \(a mapping there is a method's")]:
        (tmp_path / "s.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "s.yaml", ["method=kd"])


def test_a_key_of_another_method_is_refused_naming_its_owners(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("tiny-student", ["method=kd", "lambda_att=0.5"])
    assert str(err.value) == "override: lambda_att: a setting of methods a2d, a2d-layerwise, not of kd"
    with pytest.raises(ConfigError, match=r"^override: ckd_grouping: a setting of method ckd, not of a2d$"):
        load_config("tiny-student", ["ckd_grouping=cc"])
    with pytest.raises(ConfigError, match=r"override: mu_kd: a setting of methods a2d, .*, not of none"):
        load_config("tiny-student", ["method=none", "mu_kd=0.5"])
    flat = tmp_path / "mine.yaml"
    flat.write_text("d_model: 256\nlambda_att: 1.0\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: lambda_att: a setting of methods a2d, a2d-layerwise, not of "
                                          r"kd; in a YAML file, put it under a section `a2d:`"):
        load_config(f"tiny-student+{flat}", ["method=kd"])
    with pytest.raises(ConfigError, match=r"a2d-paper.yaml: lambda_att: .* not of kd"):
        load_config("paper-student+a2d-paper", ["method=kd"])


def test_a_train_run_has_no_method_settings():
    with pytest.raises(ConfigError, match=r"^override: lambda_att: a setting of methods a2d, a2d-layerwise; a2d train "
                                          r"has no method"):
        load_config("tiny-teacher", ["lambda_att=0.5"], train=True)
    with pytest.raises(ConfigError, match=r"^override: aam_lr: a setting of a2d distill; a2d train has no method"):
        load_config("tiny-teacher", ["aam_lr=0.1"], train=True)
    cfg = load_config("tiny-teacher", train=True)
    assert cfg.method is None and cfg.settings is None
    # the train recipe's own guard, for a Python caller who loads a distillation's config
    assert load_config("tiny-teacher").without_method().to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match=r"^mu_kd, lambda_att: distillation settings, which a run without a method"):
        load_config("tiny-teacher", ["lambda_att=0.5", "mu_kd=2"]).without_method()


def test_each_method_saves_only_its_own_settings():
    kd = load_config("tiny-student", ["method=kd", "mu_kd=0.5"]).to_dict()
    assert {"method", "mu_kd", "kd_temperature", "loss_mixing"} <= set(kd) and kd["mu_kd"] == 0.5
    assert not {"ckd_grouping", "lambda_att", "feature_weight", "beam", "settings"} & set(kd)
    ckd = load_config("tiny-student", ["method=ckd", "ckd_grouping=cc"])
    assert ckd.to_dict()["ckd_grouping"] == ckd.settings.ckd_grouping == "cc" and "pkd_mapping" not in ckd.to_dict()
    # a train run (method None) saves the common settings only: a teacher's config.yaml has no method keys
    teacher = load_config("tiny-teacher", train=True).to_dict()
    assert not {"method", "ckd_grouping", "mu_kd", "aam_lr", "loss_mixing"} & set(teacher)
    assert load_config(None, base=teacher).d_model == 128


def test_saved_configs_round_trip_and_old_ones_load(tmp_path):
    cfg = load_config("tiny-student", ["method=pkd", "pkd_mapping=last", "feature_weight=2"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(None, base=read_yaml(tmp_path / "config.yaml"))
    assert again.to_dict() == cfg.to_dict() and again.settings == cfg.settings
    # an older version's config.yaml holds every method's keys, flat, and the retired beam: the run's own
    # method's settings load, the others (which that run never used) are skipped
    common = load_config("tiny-student", train=True).to_dict()
    old = {**common, "beam": 5, "method": "kd", "mu_kd": 0.5, "kd_temperature": 2.0, "lambda_att": 1.0,
           "kl_norm": "reference", "selective_word_rate": 0.5, "feature_weight": 1.0, "pkd_mapping": "skip",
           "ckd_grouping": "sc", "aam_lr": 0.0}
    kd = load_config(None, base=old)
    assert (kd.method, kd.settings) == ("kd", WordKDSettings(mu_kd=0.5, kd_temperature=2.0))
    assert not {"beam", "ckd_grouping", "lambda_att"} & set(kd.to_dict())
    # resumed with method=a2d: the saved keys that A2D owns apply (the older version saved them all)
    a2d = load_config(None, ["method=a2d"], base=old)
    assert (a2d.settings.mu_kd, a2d.settings.kl_norm, a2d.settings.lambda_att) == (0.5, "reference", 1.0)
    # a train run's saved config of an older version (method: a2d and its settings) resumes as a train run
    assert load_config(None, base={**old, "method": "a2d"}, train=True).to_dict() == common
    with pytest.raises(ConfigError, match="beam is no longer a setting"):
        load_config("tiny-student", ["beam=4"])
    with pytest.raises(ConfigError, match="saved config: ckd_grouping='xx': must be one of sc, cc, rc, oc"):
        load_config(None, base={**old, "method": "ckd", "ckd_grouping": "xx"})
    with pytest.raises(ConfigError, match="unknown method"):
        load_config("tiny-student", ["method=nope"])


def test_a_method_is_built_with_its_own_settings_only():
    with pytest.raises(TypeError, match="method kd is built with its own settings, WordKDSettings, not A2DSettings"):
        WordKD(A2DSettings(), None, None)
    with pytest.raises(TypeError, match="not Config"):
        WordKD(load_config("tiny-student", ["method=kd"]), None, None)
    assert all(dataclasses.is_dataclass(cls.Settings) for cls in METHODS.values())


def test_cli_refuses_another_methods_key_before_any_work(tmp_path, monkeypatch, capsys):
    """``a2d distill --method kd lambda_att=0.5``: one line naming a2d, before the recipe runs or --out exists."""
    import a2d.recipes.distill
    import a2d.recipes.train

    def never(*args, **kwargs):
        raise AssertionError("the recipe ran")

    monkeypatch.setattr(a2d.recipes.distill, "distill", never)
    monkeypatch.setattr(a2d.recipes.train, "train", never)
    out = tmp_path / "run"
    args = ["--data", str(tmp_path / "data"), "--preset", "tiny-student", "--out", str(out)]
    assert cli.main(["distill", "--teacher", str(tmp_path / "t"), "--method", "kd", *args, "lambda_att=0.5"]) == 2
    err = capsys.readouterr().err
    assert err == "a2d: error: override: lambda_att: a setting of methods a2d, a2d-layerwise, not of kd\n"
    assert cli.main(["train", *args, "kl_norm=reference"]) == 2
    assert "kl_norm: a setting of methods a2d, a2d-layerwise; a2d train has no method" in capsys.readouterr().err
    assert not out.exists()


def test_a2d_config_prints_the_runs_own_settings(capsys):
    assert cli.main(["config", "--preset", "paper-student", "method=kd", "mu_kd=0.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["method"], printed["mu_kd"], printed["encoder_layers"]) == ("kd", 0.5, 3)
    assert "lambda_att" not in printed  # paper-student's a2d section is not a KD run's
    assert cli.main(["config", "--preset", "paper-student"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["lambda_att"] == 1.0


def test_choice_lists_come_from_the_components():
    from a2d.alignment import AAM_MODES
    from a2d.attention import GRANULARITIES
    from a2d.losses import ATT_KINDS, DECAY_UNITS, KIND_WEIGHTS, KL_NORMS
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
    assert cli.main(["config", "--keys"]) == 0


def test_opus_mt_activations_are_accepted(tmp_path):
    """OPUS-MT's swish (and the other activations Marian and CTranslate2's converter both know) from a preset
    YAML or an override; one neither knows is refused, naming the key and the choices."""
    preset = tmp_path / "opus.yaml"
    preset.write_text("activation_function: swish\nd_model: 32\nffn_dim: 64\nencoder_attention_heads: 2\n"
                      "decoder_attention_heads: 2\n")
    cfg = load_config(f"tiny-student+{preset}")
    assert cfg.activation_function == "swish"
    assert build_model(cfg, 100).config.activation_function == "swish"
    assert load_config("tiny-student", ["activation_function=gelu_new"]).activation_function == "gelu_new"
    assert {"relu", "gelu", "swish", "silu"} <= set(ACTIVATIONS)
    with pytest.raises(ConfigError, match="activation_function='tanh': must be one of relu, gelu, swish"):
        load_config("tiny-student", ["activation_function=tanh"])


def test_the_config_knows_which_keys_were_given(tmp_path):
    """``given``: the keys a preset, a saved config or an override set (a distilled student takes the teacher's
    max_positions unless it is one of them); not a key of config.yaml."""
    assert "max_positions" not in load_config("tiny-student").given
    assert "encoder_layers" in load_config("tiny-student").given  # set by the preset
    cfg = load_config("tiny-student", ["max_positions=256"])
    assert "max_positions" in cfg.given and cfg.max_positions == 256
    assert "given" not in cfg.to_dict() and "max_positions" in cfg.to_dict()
    assert "max_positions" in load_config(None, base=cfg.to_dict()).given  # a resumed run keeps its own
    assert "given" not in describe_keys()
    assert load_config("tiny-student").num_beams == 0 and load_config("tiny-student", ["num_beams=4"]).num_beams == 4
    with pytest.raises(ConfigError, match="num_beams=-1: must be >= 0"):
        load_config("tiny-student", ["num_beams=-1"])


@pytest.mark.parametrize("key, guess", [("activation", "activation_function"), ("d_modl", "d_model"),
                                        ("lamda_att", "lambda_att")])
def test_an_unknown_key_names_the_one_probably_meant(tmp_path, key, guess):
    preset = tmp_path / "opus.yaml"
    preset.write_text(f"{key}: 1\n")
    with pytest.raises(ConfigError, match=f"unknown key '{key}'; did you mean {guess}\\?"):
        load_config(f"tiny-student+{preset}")
    with pytest.raises(ConfigError, match="unknown key 'nothing_like_it' \\(see"):
        load_config("tiny-student", ["nothing_like_it=1"])
