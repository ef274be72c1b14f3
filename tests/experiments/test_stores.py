"""a2d.experiments.stores: what a grid keeps beside its results (translations, teachers, students)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from a2d.experiments import runner
from a2d.experiments.grid import load_grid
from a2d.experiments.plan import data_dir
from a2d.experiments.runner import dry_run, run_grid
from a2d.experiments.stores import round_to_fp16
from a2d.utils import UserError
from tests.experiments.common import reproduce, smoke_variant


def test_stored_teacher_lets_a_grid_go_on(tmp_path, data_root, monkeypatch):
    """With store_teachers, students trained after the run folders are gone are distilled from the same teacher;
    without a stored copy, a teacher with distilled students is never silently trained again."""
    grid_file = smoke_variant(tmp_path, "keep", store_teachers=True, methods={"kd": {"method": "kd"}})
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [str(grid_file), "--runs-dir", str(runs), "--results-dir", str(results)]
    assert reproduce(argv) == 0

    store = results / "quality-keep-teachers" / "de-en"
    manifest = json.loads((store / "teacher.json").read_text())
    info = json.loads((results / "quality-keep.json").read_text())
    assert manifest["hyp_sha256"] == next(c["hyp_sha256"] for c in info["cells"] if c["id"] == "de-en/teacher")
    assert {"model.safetensors", "config.json", "sentencepiece.model"} <= set(manifest["files"])
    teacher_bytes = (runs / "keep" / "de-en" / "teacher" / "best" / "model.safetensors").read_bytes()
    assert (store / "model.safetensors").read_bytes() == teacher_bytes

    # the run folders are gone (a new session): results in the JSON count as done, nothing is trained
    shutil.rmtree(runs / "keep")
    lines = []
    dry_run(load_grid(grid_file), runs, results, None, log=lines.append)
    assert any("de-en/teacher" in x and "stored copy" in x for x in lines)
    assert any("de-en/kd-s1" in x and "done" in x for x in lines) and lines[-1].startswith("0 cell(s)")

    def no_teacher_training(*args, **kwargs):
        raise AssertionError("the teacher was trained again")

    monkeypatch.setattr(runner, "train", no_teacher_training)
    assert reproduce(argv) == 0
    # a student trained now (--redo) is distilled from the stored copy, not from a new teacher
    seen = []
    distill = runner.distill
    monkeypatch.setattr(runner, "distill", lambda cfg, data, out, teacher, **kw: seen.append(teacher) or
                        distill(cfg, data, out, teacher, **kw))
    # on a new machine the data is gone too: it is prepared again with the stored teacher's vocabulary
    # (a newly trained SentencePiece model has the same pieces but not the same bytes, and is refused)
    data = data_dir(load_grid(grid_file), runs, "de-en")
    shutil.rmtree(data)
    assert reproduce(argv + ["--only", "de-en/kd", "--redo"]) == 0
    assert seen == [store] and (runs / "keep" / "de-en" / "kd-s1" / "cell.json").is_file()
    assert (data / "sentencepiece.model").read_bytes() == (store / "sentencepiece.model").read_bytes()
    assert json.loads((data / "meta.json").read_text())["vocab_from"]["path"] == str((store / "sentencepiece.model").resolve())
    # data prepared with another vocabulary is refused with the way out, before any training
    (data / "sentencepiece.model").write_bytes(b"other")
    shutil.rmtree(runs / "keep" / "de-en" / "kd-s1")
    with pytest.raises(UserError, match="another SentencePiece model than the stored teacher's"):
        run_grid(load_grid(grid_file), runs, results, ["de-en/kd"], log=lambda _: None, redo=True)
    shutil.rmtree(data)

    # a changed stored file is refused; with no stored copy, the teacher of existing students is not replaced
    shutil.rmtree(runs / "keep")
    (store / "config.json").write_text("{}")
    with pytest.raises(UserError, match="changed since the teacher was stored"):
        run_grid(load_grid(grid_file), runs, results, ["de-en/kd"], log=lambda _: None, redo=True)
    shutil.rmtree(store)
    with pytest.raises(UserError, match="holds the teacher that de-en/kd-s1 were distilled from"):
        run_grid(load_grid(grid_file), runs, results, ["de-en/kd"], log=lambda _: None, redo=True)
    assert not (runs / "keep" / "de-en" / "teacher").exists()


def test_students_are_stored_beside_the_results(tmp_path, data_root):
    """With store_teachers, every cell's best student is kept too (fp16 weights, vocabulary, configs), sha-checked,
    and can be scored again without its run folder."""
    from safetensors import safe_open

    from a2d.evaluate import evaluate_model
    from a2d.experiments.plan import eval_dir, plan
    from a2d.experiments.stores import stored_student

    grid_file = smoke_variant(tmp_path, "students", store_teachers=True, methods={"nokd": {"method": "none"}})
    runs, results = tmp_path / "runs", tmp_path / "results"
    assert reproduce([str(grid_file), "--runs-dir", str(runs), "--results-dir", str(results)]) == 0

    grid = load_grid(grid_file)
    job = next(j for j in plan(grid, runs) if j.cell is not None)
    store = results / "quality-students-students" / "de-en" / "nokd-s1"
    manifest = json.loads((store / "student.json").read_text())
    info = json.loads((results / "quality-students.json").read_text())
    record = next(c for c in info["cells"] if c["id"] == "de-en/nokd-s1")
    assert manifest["id"] == "de-en/nokd-s1" and manifest["hyp_sha256"] == record["hyp_sha256"]
    assert manifest["dtype"] == "float16"
    assert {"model.safetensors", "config.json", "config.yaml", "sentencepiece.model"} <= set(manifest["files"])
    assert (store / "sentencepiece.model").read_bytes() == (job.run / "best" / "sentencepiece.model").read_bytes()
    with safe_open(store / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    assert (store / "model.safetensors").stat().st_size < 0.6 * (job.run / "best" / "model.safetensors").stat().st_size
    assert not (results / "quality-students-students" / "de-en" / "teacher").exists()  # the teacher has its own store
    assert stored_student(grid, results, job, record) == store

    # scored again from the stored copy alone: the run folder is gone
    shutil.rmtree(runs / "students")
    result = evaluate_model(store, eval_dir(grid, runs, "de-en"), beam=grid.beam, progress=False)
    assert result["sentences"] == record["test_sentences"] == 30
    assert abs(result["bleu"] - record["bleu"]) < 2.0  # fp16 weights: (nearly) the same translations

    (store / "config.json").write_text("{}")
    with pytest.raises(UserError, match="changed since the student was stored"):
        stored_student(grid, results, job, record)


def test_float16_teacher_is_scored_distilled_from_and_stored_as_float16(tmp_path, data_root):
    """teacher_dtype: float16 rounds the trained teacher before it is scored; the stored copy (float16, half the
    bytes) holds the same values, so students distilled from the run or from the copy see the same teacher."""
    grid_file = smoke_variant(tmp_path, "half", store_teachers=True, teacher_dtype="float16",
                              methods={"kd": {"method": "kd"}})
    runs, results = tmp_path / "runs", tmp_path / "results"
    assert reproduce([str(grid_file), "--runs-dir", str(runs), "--results-dir", str(results)]) == 0
    best = load_file(runs / "half" / "de-en" / "teacher" / "best" / "model.safetensors")
    stored = load_file(results / "quality-half-teachers" / "de-en" / "model.safetensors")
    assert set(best) == set(stored)
    for name, tensor in best.items():
        assert tensor.dtype == torch.float32 and stored[name].dtype == torch.float16, name
        assert torch.equal(tensor, stored[name].float()), name
    assert json.loads((results / "quality-half-teachers" / "de-en" / "teacher.json").read_text())["dtype"] == "float16"
    assert any(not torch.equal(t, t.half().float()) for t in
               load_file(runs / "half" / "de-en" / "teacher" / "last" / "model.safetensors").values()), \
        "the training checkpoint keeps float32 weights (only the teacher that students see is rounded)"


def test_round_to_fp16_refuses_what_float16_cannot_hold(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.tensor([1.0 + 2 ** -13, 3.0]), "i": torch.tensor([7])}, path)
    assert round_to_fp16(path) is True and round_to_fp16(path) is False  # rounded once, then unchanged
    save_file({"w": torch.tensor([1e6])}, path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="w holds values float16 cannot hold"):
        round_to_fp16(path)
    assert path.read_bytes() == before
