"""The train recipe end to end on a Multi30k slice: learning, checkpoints, resume, CLI errors."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import MarianMTModel

from a2d import training
from a2d.cli import main
from a2d.evaluate import evaluate_model
from a2d.recipes.train import train
from a2d.rundir import TrainState
from a2d.settings import load_config
from a2d.training import end_of_epoch
from tests.recipes.conftest import TINY, signal_at


def quiet(*args):
    pass


def test_smoke_teacher_learns_and_scores(small_data, tmp_path):
    run = tmp_path / "teacher"
    state = train(load_config("tiny-teacher", TINY + ["max_epochs=4"]), small_data, run, log=quiet).state
    assert state.finished and state.epoch == 5
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "valid"]
    assert len(valid) == 4
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"] - 0.3
    # best/ is a plain Hugging Face folder with the vocabulary and the run config
    model = MarianMTModel.from_pretrained(run / "best")
    assert model.config.encoder_layers == 2
    assert (run / "best" / "sentencepiece.model").exists() and (run / "best" / "config.yaml").exists()
    result = evaluate_model(run, small_data, split="test", beam=2, out=tmp_path / "test.json", progress=False)
    assert result["bleu"] > 0.0 and result["sentences"] == 1000


def test_resume_matches_uninterrupted_run(small_data, tmp_path):
    cfg = TINY + ["max_tokens=400", "log_every=1"]
    train(load_config("tiny-student", cfg + ["max_steps=8"]), small_data, tmp_path / "straight", log=quiet)
    train(load_config("tiny-student", cfg + ["max_steps=4"]), small_data, tmp_path / "split", log=quiet)
    state = json.loads((tmp_path / "split" / "last" / "trainer" / "state.json").read_text())
    assert state["update"] == 4 and state["batch_in_epoch"] == 4  # stopped mid-epoch
    train(load_config("tiny-student", cfg + ["max_steps=8"]), small_data, tmp_path / "split", resume=True, log=quiet)
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "split" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [x["update"] for x in lines if x["type"] == "train"] == list(range(1, 9))


def test_a_run_stopped_by_max_steps_validates_and_saves_best(small_data, tmp_path):
    """max_steps mid-epoch: validated at the last update, best/ holds those weights, the summary has its BLEU."""
    lines, run = [], tmp_path / "run"
    train(load_config("tiny-student", TINY + ["max_tokens=400", "max_steps=5", "valid_max_sentences=20"]), small_data,
          run, log=lines.append)
    state = json.loads((run / "last" / "trainer" / "state.json").read_text())
    assert state["update"] == 5 and state["batch_in_epoch"] == 5 and state["finished"]  # stopped mid-epoch 1
    valid = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]
    assert [(v["update"], v["epoch"]) for v in valid] == [(5, 1)]
    assert state["best_bleu"] == valid[0]["valid_bleu"] >= 0.0 and state["best_epoch"] == 1
    assert state["bad_epochs"] == 0
    best, last = load_file(run / "best" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    assert lines[-1] == f"stopped: reached max_steps=5; best valid BLEU {valid[0]['valid_bleu']:.2f} at epoch 1"
    assert any(line.startswith("epoch 1 (in progress, max_steps reached): update 5, valid loss") for line in lines)


def test_max_steps_at_an_epoch_end_validates_once(small_data, tmp_path):
    cfg = TINY + ["max_tokens=400", "valid_max_sentences=20", "max_epochs=1"]
    straight = tmp_path / "epoch"
    train(load_config("tiny-student", cfg), small_data, straight, log=quiet)
    per_epoch = json.loads((straight / "last" / "trainer" / "state.json").read_text())["update"]
    run = tmp_path / "steps"
    train(load_config("tiny-student", cfg + [f"max_steps={per_epoch}"]), small_data, run, log=quiet)
    valid = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]
    assert [(v["update"], v["epoch"]) for v in valid] == [(per_epoch, 1)]
    assert json.loads((run / "last" / "trainer" / "state.json").read_text())["epoch"] == 2  # the epoch was closed


def test_a_run_killed_after_its_last_update_validates_on_resume(small_data, tmp_path, monkeypatch):
    """last/ written by save_every at the final update, killed in the validation: --resume validates, best/ follows."""
    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    cfg = load_config("tiny-student", TINY + ["max_tokens=400", "max_steps=4", "save_every=2", "valid_max_sentences=20"])
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(training, "validate", killed)
        with pytest.raises(Killed):
            train(cfg, small_data, run, log=quiet)
    state = json.loads((run / "last" / "trainer" / "state.json").read_text())
    assert state["update"] == 4 and not state["finished"] and not (run / "best").exists()
    lines = []
    train(cfg, small_data, run, resume=True, log=lines.append)
    state = json.loads((run / "last" / "trainer" / "state.json").read_text())
    assert state["finished"] and state["best_bleu"] >= 0.0
    best, last = load_file(run / "best" / "model.safetensors"), load_file(run / "last" / "model.safetensors")
    assert all(torch.equal(best[k], last[k]) for k in best)
    assert [json.loads(x)["update"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in x] == [4]
    assert "-1.00" not in lines[-1]
    # a finished run resumed again does not validate again
    again = []
    train(cfg, small_data, run, resume=True, log=again.append)
    assert not [line for line in again if "valid loss" in line] and again[-1] == lines[-1]
    assert [json.loads(x)["update"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"valid"' in x] == [4]


def test_a_mid_epoch_validation_does_not_count_for_patience():
    state = TrainState(best_bleu=10.0, best_epoch=1)
    assert not end_of_epoch(state, 9.0, epoch_done=False)
    assert state.bad_epochs == 0 and state.best_bleu == 10.0
    assert not end_of_epoch(state, 9.0)
    assert state.bad_epochs == 1
    state.epoch = 3
    assert end_of_epoch(state, 11.0, epoch_done=False)
    assert (state.best_bleu, state.best_epoch, state.bad_epochs) == (11.0, 3, 0)


def test_progress_bar_is_quiet_when_stderr_is_not_a_terminal(small_data, tmp_path, capfd):
    """Logs of long runs (nohup, CI) get one bar line a minute, not one per logged update."""
    cfg = load_config("tiny-student", TINY + ["max_tokens=400", "log_every=1", "max_steps=8"])
    train(cfg, small_data, tmp_path / "run", log=quiet)
    err = capfd.readouterr().err
    draws = err.replace("\r", "\n").count("epoch 1:")
    assert 1 <= draws <= 3, err  # opened, maybe once more, closed; never once per logged update


def test_new_run_refuses_to_overwrite(small_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        train(load_config("tiny-student", TINY + ["max_steps=1"]), small_data, tmp_path / "run", log=quiet)


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "{data}", "--preset", "nope", "--out", "{tmp}/r"], "unknown preset"),
    (["train", "--data", "{data}", "--preset", "tiny-teacher", "--out", "{tmp}/r", "d_modle=3"], "unknown key 'd_modle'"),
    (["train", "--data", "{data}", "--preset", "tiny-teacher", "--out", "{tmp}/r", "lr=fast"], "lr='fast' is not a valid float"),
    (["train", "--data", "{data}", "--preset", "tiny-teacher", "--out", "{tmp}/r", "d_model=30"], "not divisible"),
    (["train", "--data", "{tmp}/missing", "--preset", "tiny-teacher", "--out", "{tmp}/r"], "missing"),
    (["train", "--data", "{data}", "--out", "{tmp}/r", "--resume"], "--resume"),
    (["evaluate", "--model", "{tmp}/nothing", "--data", "{data}"], "not a model folder"),
])
def test_cli_errors_are_one_line(argv, message, small_data, tmp_path, capsys):
    argv = [a.format(data=small_data, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("a2d: error:") and message in err and "\n" not in err
    assert not (tmp_path / "r" / "best").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_last_and_resume_continues_bit_for_bit(signum, small_data, tmp_path, monkeypatch):
    cfg = TINY + ["max_tokens=400", "log_every=1", "valid_max_sentences=20"]
    train(load_config("tiny-student", cfg + ["max_steps=7"]), small_data, tmp_path / "straight", log=quiet)
    with monkeypatch.context() as m:
        signal_at(m, 3, signum)
        with pytest.raises(training.Interrupted, match=f"{signal.Signals(signum).name} at update 3; .*--resume"):
            train(load_config("tiny-student", cfg + ["max_steps=7"]), small_data, tmp_path / "split", log=quiet)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are given back
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    state = json.loads((tmp_path / "split" / "last" / "trainer" / "state.json").read_text())
    assert state["update"] == 3 and not state["finished"]
    train(load_config("tiny-student", cfg + ["max_steps=7"]), small_data, tmp_path / "split", resume=True, log=quiet)
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "split" / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_command_says_where_it_stopped(small_data, tmp_path, monkeypatch, capsys):
    signal_at(monkeypatch, 2)
    run = tmp_path / "run"
    code = main(["train", "--data", str(small_data), "--preset", "tiny-student", "--out", str(run),
                 *TINY, "max_tokens=400", "max_steps=5"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 130 and err.startswith("a2d: interrupted by SIGINT at update 2;") and str(run / "last") in err


def test_save_every_minutes_saves_between_epoch_ends():
    cfg = load_config("tiny-student", ["save_every_minutes=0.5"])
    points = training.SavePoints(cfg, training.make_accelerator(cfg), None)
    assert points.due(1) == (False, False)
    points.last_save -= 31
    assert points.due(2) == (True, False) and points.due(3) == (False, False)
    with points:
        os.kill(os.getpid(), signal.SIGINT)
        assert points.due(4) == (True, True)
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait for the update to end
            os.kill(os.getpid(), signal.SIGINT)


def test_the_first_updates_say_the_rate_the_epoch_time_and_the_memory(small_data, tmp_path):
    lines = []
    train(load_config("tiny-student", TINY + ["max_tokens=400", "max_steps=11", "valid_max_sentences=20"]),
          small_data, tmp_path / "run", log=lines.append)
    epoch = next(x for x in lines if x.startswith("an epoch: "))
    first = next(x for x in lines if x.startswith("first 10 updates: "))
    assert lines.index(epoch) < lines.index(first)
    assert re.search(r"an epoch: [\d,]+ target tokens in [\d,]+ batches \([\d,]+ updates\); memory now [\d.]+ GiB", epoch)
    assert re.search(r"[\d,]+ target tokens/s, about [\d.,]+ min per epoch; peak memory [\d.]+ GiB resident", first)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU bf16 autocast")
def test_bf16_training_on_a_cpu_learns_and_keeps_fp32_weights(small_data, tmp_path, monkeypatch):
    """The whole recipe under CPU bf16 autocast (forced on, whatever this CPU's instructions): the loss
    falls, and the saved weights stay fp32."""
    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: True)
    run = tmp_path / "bf16"
    train(load_config("tiny-student", TINY + ["max_epochs=2", "precision=bf16"]), small_data, run, log=quiet)
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "valid"]
    assert len(valid) == 2 and valid[1]["valid_loss"] < valid[0]["valid_loss"]
    assert {t.dtype for t in load_file(run / "best" / "model.safetensors").values()} == {torch.float32}
