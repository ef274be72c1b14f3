"""The distill recipe end to end: A2D on a Multi30k slice with a teacher that differs in depth, heads and width."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from a2d import training
from a2d.cli import main
from a2d.models import load_model
from a2d.recipes.distill import distill
from a2d.recipes.train import train
from a2d.settings import load_config
from tests.recipes.conftest import TINY, signal_at


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def teacher(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "t"
    train(load_config("tiny-teacher", TINY + ["max_epochs=2", "encoder_layers=3", "decoder_layers=3"]),
          small_data, run, log=quiet)
    return run


def test_a2d_distill_lowers_att_and_leaves_teacher_alone(small_data, teacher, tmp_path):
    before = load_file(teacher / "best" / "model.safetensors")
    cfg = load_config("tiny-student", TINY + ["max_epochs=2", "encoder_attention_heads=8", "decoder_attention_heads=8",
                                              "d_model=48", "ffn_dim=96", "log_every=2", "method=a2d"])
    result = distill(cfg, small_data, tmp_path / "a2d", teacher, log=quiet)
    assert result.state.finished
    train_lines = [json.loads(x) for x in (tmp_path / "a2d" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in train_lines if x["type"] == "train"]
    for key in ("ce", "kd", "att", "att_enc_self", "att_dec_self", "att_dec_cross", "w_att", "w_kd"):
        assert key in train_lines[-1], key
    early = sum(x["att"] for x in train_lines[:3]) / 3
    late = sum(x["att"] for x in train_lines[-3:]) / 3
    assert late < early
    # epoch 2 lambda = 0.9 * epoch 1 lambda (paper schedule)
    assert train_lines[0]["w_att"] == pytest.approx(cfg.settings.lambda_att)
    assert train_lines[-1]["w_att"] == pytest.approx(0.9 * cfg.settings.lambda_att)
    # the teacher's files are untouched
    after = load_file(teacher / "best" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the student is a plain model without AAM tensors; the AAM lies beside it
    student_tensors = load_file(tmp_path / "a2d" / "best" / "model.safetensors")
    assert not any("aam" in k for k in student_tensors)
    aam = load_file(tmp_path / "a2d" / "method.safetensors")
    # student 2 layers x 8 heads -> teacher 3 layers x 4 heads, per kind
    assert aam["aam.enc_self.logits"].shape == (12, 16)
    assert aam["aam.dec_cross.logits"].shape == (12, 16)
    model, _ = load_model(tmp_path / "a2d")
    assert model.config.encoder_attention_heads == 8


def test_distill_resume_restores_aam(small_data, teacher, tmp_path):
    cfg = TINY + ["max_tokens=400", "log_every=1", "method=a2d"]
    distill(load_config("tiny-student", cfg + ["max_steps=6"]), small_data, tmp_path / "straight", teacher, log=quiet)
    distill(load_config("tiny-student", cfg + ["max_steps=3"]), small_data, tmp_path / "split", teacher, log=quiet)
    distill(load_config("tiny-student", cfg + ["max_steps=6"]), small_data, tmp_path / "split", teacher,
            resume=True, log=quiet)
    for name in ("model.safetensors", "trainer/method.safetensors"):
        a = load_file(tmp_path / "straight" / "last" / name)
        b = load_file(tmp_path / "split" / "last" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_a_distillation_stopped_by_max_steps_validates_and_saves_best(small_data, teacher, tmp_path):
    """best/ and the AAM beside it are those of the validated last update, not unvalidated weights."""
    lines, run = [], tmp_path / "a2d"
    cfg = load_config("tiny-student", TINY + ["max_tokens=400", "max_steps=3", "valid_max_sentences=20", "method=a2d"])
    distill(cfg, small_data, run, teacher, log=lines.append)
    state = json.loads((run / "last" / "trainer" / "state.json").read_text())
    valid = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]
    assert [v["update"] for v in valid] == [3] and state["batch_in_epoch"] == 3
    assert state["best_bleu"] == valid[0]["valid_bleu"] >= 0.0
    best, last = load_file(run / "best" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    assert all(torch.equal(best[k], last[k]) for k in best)
    aam, aam_last = load_file(run / "method.safetensors"), load_file(run / "last" / "trainer" / "method.safetensors")
    assert aam.keys() == aam_last.keys() and all(torch.equal(aam[k], aam_last[k]) for k in aam)
    assert "-1.00" not in lines[-1] and f"best valid BLEU {valid[0]['valid_bleu']:.2f} at epoch 1" in lines[-1]


def test_distill_errors(small_data, teacher, tmp_path, capsys):
    other = tmp_path / "other-data"
    from a2d.data.corpus import locate_corpus
    from a2d.data.prepare import prepare
    prepare(other, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=500, max_train=300, log=quiet)
    argv = ["distill", "--data", str(other), "--teacher", str(teacher), "--preset", "tiny-student",
            "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "another vocabulary" in capsys.readouterr().err
    argv = ["distill", "--data", str(small_data), "--preset", "tiny-student", "--out", str(tmp_path / "y")]
    assert main(argv) == 2
    assert "needs a teacher" in capsys.readouterr().err
    argv[-1] = str(tmp_path / "z")
    assert main(argv + ["--method", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["none", "kd", "selective-kd", "a2d", "a2d-layerwise", "tinybert", "minilm",
                                    "alp-kd", "pkd", "ckd"])
def test_every_method_runs_in_the_recipe(method, small_data, teacher, tmp_path):
    cfg = load_config("tiny-student", TINY + ["max_steps=2", "log_every=1", "valid_max_sentences=10",
                                              f"method={method}", "d_model=48", "ffn_dim=96"])
    result = distill(cfg, small_data, tmp_path / method, teacher, log=quiet)
    assert result.state.update == 2
    lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    line = [x for x in lines if x["type"] == "train"][-1]
    assert all(v == v and abs(v) != float("inf") for v in line.values() if isinstance(v, float))
    assert (tmp_path / method / "best" / "model.safetensors").exists()


def test_a_signal_saves_the_student_and_its_aam_for_resume(small_data, teacher, tmp_path, monkeypatch):
    cfg = load_config("tiny-student", TINY + ["max_tokens=400", "log_every=1", "method=a2d", "max_steps=5"])
    distill(cfg, small_data, tmp_path / "straight", teacher, log=quiet)
    with monkeypatch.context() as m:
        signal_at(m, 2)
        with pytest.raises(training.Interrupted, match="SIGINT at update 2"):
            distill(cfg, small_data, tmp_path / "split", teacher, log=quiet)
    distill(cfg, small_data, tmp_path / "split", teacher, resume=True, log=quiet)
    for name in ("model.safetensors", "trainer/method.safetensors"):
        a = load_file(tmp_path / "straight" / "last" / name)
        b = load_file(tmp_path / "split" / "last" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
