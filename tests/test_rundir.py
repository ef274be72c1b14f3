"""Run folders: status, what a kill leaves behind, resuming a run stopped before its first checkpoint, the metrics log."""
from __future__ import annotations

import json
import os

import pytest
import torch

from a2d.rundir import MetricsLog, RunDir, TrainState, method_files, metrics_file, model_dir, run_label
from a2d.utils import UserError


def fake_checkpoint(folder, **state):
    (folder / "trainer").mkdir(parents=True)
    (folder / "trainer" / "state.json").write_text(json.dumps({**TrainState().__dict__, **state}))


def test_status_of_new_broken_started_finished(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.status() == "new"
    run.path.mkdir()
    (run.path / "config.yaml").write_text("seed: 1\n")
    assert run.status() == "broken"
    fake_checkpoint(run.last, update=3)
    assert run.status() == "started" and run.state().update == 3
    run.reopen()
    fake_checkpoint(tmp_path / "f" / "last", finished=True)
    assert RunDir(tmp_path / "f").status() == "finished"
    RunDir(tmp_path / "f").reopen()
    assert RunDir(tmp_path / "f").status() == "started"


def test_tidy_removes_temporary_folders_and_recovers_a_half_done_swap(tmp_path):
    run = RunDir(tmp_path / "r")
    fake_checkpoint(run.path / ".last.old", update=7)  # killed between the two renames: no last/
    (run.path / ".last.abc123.tmp" / "trainer").mkdir(parents=True)
    (run.path / ".best.xyz.tmp").mkdir()
    (run.path / ".metrics.jsonl.q1.tmp").write_text("x")
    (run.path / "config.yaml").write_text("seed: 1\n")
    assert run.status() == "started" and run.state().update == 7  # the leftover is found before tidying
    notes = []
    assert run.begin(resume=True, log=notes.append)
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "last"]
    assert run.state().update == 7 and any("recovered" in n for n in notes)


def test_tidy_drops_the_old_copy_when_the_swap_finished(tmp_path):
    run = RunDir(tmp_path / "r")
    fake_checkpoint(run.last, update=9)
    fake_checkpoint(run.path / ".last.old", update=8)
    run.tidy(log=lambda *a: None)
    assert sorted(p.name for p in run.path.iterdir()) == ["last"] and run.state().update == 9


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "config.yaml").write_text("seed: 1\n")
    (run.path / "metrics.jsonl").write_text('{"type": "train", "upd')
    notes = []
    assert run.begin(resume=True, log=notes.append) is False
    assert list(run.path.iterdir()) == [] and "before its first checkpoint" in notes[0]


def test_begin_refuses_what_it_must_not_touch(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        RunDir(tmp_path / "full").begin(resume=False)
    with pytest.raises(UserError, match="has no last/ checkpoint.*notes.txt"):
        RunDir(tmp_path / "full").begin(resume=True, log=lambda *a: None)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    notes = []
    assert RunDir(tmp_path / "absent").begin(resume=True, log=notes.append) is False  # killed before it began
    assert (tmp_path / "absent").is_dir() and "holds no run yet" in notes[0]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        RunDir(tmp_path / "file").begin(resume=False)


def test_unwritable_out_is_refused_before_anything(tmp_path, monkeypatch):
    import a2d.utils

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(a2d.utils.tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match="cannot write in .*Read-only"):
        RunDir(tmp_path / "r").begin(resume=False)


def test_metrics_log_on_resume_keeps_only_what_the_checkpoint_accounts_for(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"type": "train", "update": u, "epoch": 1} for u in (1, 2, 3, 4)]
    lines.append({"type": "valid", "update": 4, "epoch": 1})  # validated, then killed before the epoch-end save
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"type": "train", "up')
    # the checkpoint was saved mid-epoch at update 4, the epoch's last update
    MetricsLog(path, True, TrainState(epoch=1, update=4, batch_in_epoch=4))
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["type"], x["update"]) for x in kept] == [("train", 1), ("train", 2), ("train", 3), ("train", 4)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    MetricsLog(path, True, TrainState(epoch=2, update=4))  # saved after the epoch ended: the valid line stays
    assert json.loads(path.read_text().splitlines()[-1])["type"] == "valid"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    # finished mid-epoch at max_steps: the save after that validation accounts for it (a finished run resumed)
    MetricsLog(path, True, TrainState(epoch=1, update=4, batch_in_epoch=4, finished=True))
    assert json.loads(path.read_text().splitlines()[-1])["type"] == "valid"


def test_damaged_trainer_files_are_one_line_errors(tmp_path):
    run = RunDir(tmp_path / "r")
    fake_checkpoint(run.last)
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({"state": {}}, run.trainer_dir / name)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"torch": Payload()}, run.trainer_dir / "rng.pt")
    with pytest.raises(UserError) as e:
        run.load_trainer()
    message = str(e.value)
    assert "rng.pt: not a checkpoint a2d wrote" in message and "\n" not in message
    assert "weights_only=False" not in message and not (tmp_path / "PWNED").exists()
    (run.trainer_dir / "state.json").write_text('{"epoch": 2, "upd')
    with pytest.raises(UserError, match=r"state.json: damaged"):
        run.state()


def test_where_a_runs_files_are(tmp_path):
    """The queries other modules ask instead of spelling the layout: saved config, model folder, method files."""
    run = RunDir(tmp_path / "r")
    assert run.saved_config() is None and not run.began() and model_dir(run.path) == run.path
    run.last.mkdir(parents=True)
    (run.last / "config.json").write_text("{}")
    (run.last / "config.yaml").write_text("seed: 1\n")
    assert run.saved_config() == run.last / "config.yaml"  # the top-level one lost: last/'s
    assert model_dir(run.path) == run.last and run.has_model("last") and not run.has_model("best")
    run.config_file.write_text("seed: 2\n")
    assert run.saved_config() == run.config_file and run.began()
    run.best.mkdir()
    (run.best / "config.json").write_text("{}")
    assert model_dir(run.path) == run.best and model_dir(run.last) == run.last
    assert method_files(run.path) == (run.path / "method.json", run.path / "method.safetensors")
    assert method_files(run.last) == (run.path / "method.json", run.last / "trainer" / "method.safetensors")
    assert run_label(run.last) == "r/last" and run_label(run.path) == "r"
    assert metrics_file(run.path) == run.path / "metrics.jsonl"
    run.metrics_file.write_text("")
    assert metrics_file(run.metrics_file) == run.metrics_file


def test_files_another_tool_keeps_in_the_folder_break_no_run(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    (run.path / "wall.json").write_text("{}")
    assert run.status() == "broken" and run.status(others=("wall.json",)) == "new"
