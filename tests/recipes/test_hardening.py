"""Bad input and interrupted runs end in one clear line, and never lose or half-write a file.

Each test reproduces one case of the hostile-input and kill -9 runs (issue 23).
"""
from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from safetensors.numpy import load_file as load_np, save_file as save_np
from safetensors.torch import load_file

from a2d.cli import main
from a2d.recipes import train as train_module
from a2d.recipes.train import train
from a2d.rundir import RunDir
from a2d.settings import load_config
from tests.recipes.conftest import TINY

STEP = TINY + ["max_tokens=400", "log_every=1"]


def quiet(*args):
    pass


def one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("a2d: error:") and "\n" not in err, err
    assert "Traceback" not in err and "weights_only=False" not in err
    return err


@pytest.fixture(scope="module")
def trained(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    train(load_config("tiny-student", STEP + ["max_steps=4"]), small_data, run, log=quiet)
    return run


def same_weights(a, b):
    x, y = load_file(a / "last" / "model.safetensors"), load_file(b / "last" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ----------------------------------------------------------------------------------------- kill -9 leftovers
def test_resume_after_a_kill_mid_swap_with_debris_matches_a_straight_run(small_data, trained, tmp_path):
    straight = tmp_path / "straight"
    train(load_config("tiny-student", STEP + ["max_steps=6"]), small_data, straight, log=quiet)
    run = tmp_path / "killed"
    shutil.copytree(trained, run)
    (run / "last").rename(run / ".last.old")  # killed between the two renames of a checkpoint swap
    (run / ".last.k3j2.tmp" / "trainer").mkdir(parents=True)  # a half-written checkpoint
    (run / ".best.x9.tmp").mkdir()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "update": 5, "ep')  # a line cut short
    train(load_config("tiny-student", STEP + ["max_steps=6"]), small_data, run, resume=True, log=quiet)
    assert same_weights(straight, run)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    # the first run's validation at its max_steps=4 (its best/ may be that update's) and max_steps=6's
    assert [r["update"] for r in records if r["type"] == "valid"] == [4, 6]


def test_kill_after_validation_does_not_log_the_epoch_twice(small_data, tmp_path, monkeypatch):
    cfg = STEP + ["max_epochs=1", "save_every=1", "valid_max_sentences=20"]
    straight = tmp_path / "straight"
    train(load_config("tiny-student", cfg), small_data, straight, log=quiet)

    class Killed(BaseException):
        pass

    real_save = RunDir.save

    def save(self, which, *args, **kwargs):
        if which == "best":  # just after the epoch's validation line, before the epoch-end save
            raise Killed()
        return real_save(self, which, *args, **kwargs)

    monkeypatch.setattr(RunDir, "save", save)
    run = tmp_path / "killed"
    with pytest.raises(Killed):
        train(load_config("tiny-student", cfg), small_data, run, log=quiet)
    monkeypatch.setattr(RunDir, "save", real_save)
    assert RunDir(run).state().batch_in_epoch > 0  # last/ is the mid-epoch save at the epoch's last update
    train(load_config("tiny-student", cfg), small_data, run, resume=True, log=quiet)
    kinds = [json.loads(x)["type"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("valid") == 1
    assert (run / "metrics.jsonl").read_text().count("\n") == (straight / "metrics.jsonl").read_text().count("\n")
    assert same_weights(straight, run)


def test_resume_of_a_run_killed_before_its_first_checkpoint(small_data, tmp_path, monkeypatch, capsys):
    class Killed(BaseException):
        pass

    def save(self, *args, **kwargs):
        raise Killed()

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(RunDir, "save", save)
        with pytest.raises(Killed):
            train(load_config("tiny-student", STEP + ["max_steps=2", "save_every=1"]), small_data, run, log=quiet)
    assert (run / "config.yaml").exists() and not (run / "last").exists()
    argv = ["train", "--data", small_data, "--preset", "tiny-student", "--out", run, "--max-steps", "2", "--resume",
            *STEP]
    assert main([str(a) for a in argv]) == 0
    assert "starting it from the beginning" in capsys.readouterr().out
    assert RunDir(run).state().update == 2


# ----------------------------------------------------------------------------------------- settings vs data
@pytest.mark.parametrize("override, setting", [("max_positions=12", "max_positions=12"),
                                               ("max_tokens=20", "max_tokens=20")])
def test_settings_the_data_cannot_take_write_nothing(override, setting, small_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", small_data, "--preset", "tiny-student", "--out", run, *TINY, override]
    assert setting in one_line_error(argv, capsys)
    assert not run.exists()
    assert main([str(a) for a in argv[:-1] + ["max_steps=1"]]) == 0  # the corrected command runs


def test_resume_refuses_another_shape_or_vocabulary(small_data, trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    base = ["train", "--preset", "tiny-student", "--out", run, "--resume"]
    err = one_line_error(base + ["--data", small_data, *STEP, "d_model=32"], capsys)
    assert "d_model=32" in err and "config.yaml" in err
    other = tmp_path / "other-data"
    shutil.copytree(small_data, other)
    from a2d.data.vocab import train_sentencepiece

    (other / "train.txt").write_text("\n".join(small_data.joinpath("train.en").read_text().splitlines()[:500]))
    train_sentencepiece([other / "train.txt"], other, 300)
    (other / "train.txt").unlink()
    assert "another vocabulary" in one_line_error(base + ["--data", other, *STEP], capsys)


def test_damaged_resume_files_are_one_line_errors(small_data, trained, tmp_path, capsys):
    argv = ["train", "--data", small_data, "--preset", "tiny-student", "--out", tmp_path / "run", "--resume", *STEP]
    shutil.copytree(trained, tmp_path / "run")
    state = tmp_path / "run" / "last" / "trainer" / "state.json"
    good = state.read_text()
    state.write_text(good[: len(good) // 2])
    assert "state.json: damaged" in one_line_error(argv, capsys)
    state.write_text(good)
    torch.save({"torch": io.BytesIO()}, tmp_path / "run" / "last" / "trainer" / "rng.pt")  # not plain tensors
    assert "rng.pt: not a checkpoint a2d wrote" in one_line_error(argv, capsys)


def test_a_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(small_data, tmp_path, monkeypatch):
    from a2d.utils import UserError

    calls = {"n": 0}
    real = train_module.label_smoothed_ce

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(train_module, "label_smoothed_ce", poisoned)
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"update 3: the loss term loss, ce is not finite") as e:
        train(load_config("tiny-student", STEP + ["max_steps=6", "save_every=1"]), small_data, run, log=quiet)
    assert "\n" not in str(e.value)
    assert RunDir(run).state().update == 2
    weights = load_file(run / "last" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


# ----------------------------------------------------------------------------------------- models and data
def test_damaged_or_pickled_models_are_one_line_errors(small_data, trained, tmp_path, capsys, monkeypatch):
    cut = tmp_path / "cut"
    shutil.copytree(trained / "best", cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) * 9 // 10])
    assert "truncated" in one_line_error(["evaluate", "--model", cut, "--data", small_data], capsys)
    assert "truncated" in one_line_error(["distill", "--data", small_data, "--teacher", cut, "--preset",
                                          "tiny-student", "--out", tmp_path / "d"], capsys)
    assert not (tmp_path / "d").exists()
    pickled = tmp_path / "pickled"
    shutil.copytree(trained / "best", pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": io.BytesIO()}, pickled / "pytorch_model.bin")
    err = one_line_error(["evaluate", "--model", pickled, "--data", small_data], capsys)
    assert "pytorch_model.bin" in err and "never loads" in err
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Ein Hund.\n")))
    assert "never loads" in one_line_error(["translate", "--model", pickled], capsys)


def test_a_split_without_its_offsets_is_a_one_line_error(small_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    arrays = load_np(str(data / "train.safetensors"))
    del arrays["src_offsets"]
    save_np(arrays, str(data / "train.safetensors"))
    err = one_line_error(["train", "--data", data, "--preset", "tiny-student", "--out", tmp_path / "r"], capsys)
    assert "src_offsets" in err and not (tmp_path / "r").exists()


def test_invalid_utf8_and_beam_zero_are_one_line_errors(small_data, trained, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    with open(data / "test.de", "ab") as f:
        f.write(b"kaputt \xff\xfe\n")
    with open(data / "test.en", "a") as f:
        f.write("broken\n")
    assert "test.de:1001: not valid UTF-8" in one_line_error(["evaluate", "--model", trained, "--data", data], capsys)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Ein Hund.\nkaputt \xff\n")))
    assert "stdin:2: not valid UTF-8" in one_line_error(["translate", "--model", trained], capsys)
    assert "--beam 0" in one_line_error(["evaluate", "--model", trained, "--data", small_data, "--beam", "0"], capsys)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Ein Hund.\n")))
    assert "--beam 0" in one_line_error(["translate", "--model", trained, "--beam", "0"], capsys)


def test_outputs_are_checked_before_the_work(small_data, trained, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "file").write_text("x")
    assert "is a folder" in one_line_error(["evaluate", "--model", trained, "--data", small_data, "--out", folder],
                                           capsys)
    assert "is a folder" in one_line_error(["plot", str(trained), "--out", folder], capsys)
    assert "not a folder" in one_line_error(["train", "--data", small_data, "--preset", "tiny-student", "--out",
                                             tmp_path / "file"], capsys)
    import a2d.utils

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(a2d.utils.tempfile, "mkstemp", refuse)
    for argv in (["evaluate", "--model", trained, "--data", small_data, "--out", tmp_path / "ro" / "x.json"],
                 ["plot", trained, "--out", tmp_path / "c.png"],
                 ["train", "--data", small_data, "--preset", "tiny-student", "--out", tmp_path / "ro-run"]):
        assert "Read-only" in one_line_error(argv, capsys)
    assert not (tmp_path / "ro-run").exists() or not any((tmp_path / "ro-run").iterdir())
