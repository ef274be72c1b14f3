"""a2d.experiments end to end on benchmarks/grids/smoke.yaml: tiny models, a few updates, 30 test sentences."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from a2d.experiments import compare, runner
from a2d.experiments.compare import collect
from a2d.experiments.grid import load_grid
from a2d.experiments.plan import plan
from a2d.experiments.runner import dry_run, run_grid
from a2d.experiments.stores import gz_lines, read_gz_lines
from a2d.utils import UserError
from tests.experiments.common import SMOKE, cell_bleu, reproduce, smoke_variant, table


def test_quality_grid_runs_skips_and_reports(tmp_path, data_root, monkeypatch):
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [str(SMOKE), "--runs-dir", str(runs), "--results-dir", str(results)]
    grid = load_grid(SMOKE)
    jobs = plan(grid, runs)
    # teacher, 5 Table 1 cells, then a2d-heads-2, nokd-heads-2, a2d-layerwise, a2d-att-dec-cross
    assert len(jobs) == 2 * (1 + 5 + 4)

    assert reproduce(argv) == 0
    for job in jobs:
        assert (job.run / "cell.json").is_file(), job.id
        assert (job.run / "test.hyp").is_file(), job.id
    cell = json.loads((runs / "smoke" / "de-en" / "a2d-s1" / "cell.json").read_text())
    assert cell["test_sentences"] == 30 and len(cell["hypotheses"]) == 30
    assert cell["train_seconds"] > 0 and cell["hardware"] and cell["commit"]
    assert cell["valid_best_bleu"] is not None and cell["final_att"] > 0
    assert len(cell["valid_curve"]) == cell["valid_epochs"] >= 1
    assert max(cell["valid_curve"]) == pytest.approx(cell["valid_best_bleu"], abs=0.01)
    terms = cell["loss_terms"]
    assert set(terms) == {"ce", "att", "w_att", "weighted_att", "weighted_kd"}
    assert len(terms["ce"]) == len(terms["weighted_att"]) == cell["valid_epochs"]
    assert terms["weighted_att"][0] == pytest.approx(terms["att"][0] * terms["w_att"][0], rel=1e-3)

    md_path, json_path = results / "quality-smoke.md", results / "quality-smoke.json"
    md = md_path.read_text()
    t1 = table(md, "Table 1")
    assert t1[0] == ["model", "de-en BLEU", "p vs No KD", "p vs KD", "en-de BLEU", "p vs No KD", "p vs KD"]
    assert [r[0] for r in t1[1:]] == ["Teacher", "No KD", "Vanilla KD", "Sequence KD", "A2D (per-query, convex)",
                                      "A2D (reference, linear)"]
    for row in t1[1:]:
        assert len(row) == 7 and " ± " in row[1] and " ± " in row[4]
    assert t1[2][2] == "·" and t1[3][3] == "·"  # No KD vs itself, KD vs itself
    assert float(t1[5][2]) >= 0 and float(t1[5][3]) >= 0
    valid = table(md, "Validation BLEU")
    assert valid[0] == ["model", "de-en valid BLEU", "en-de valid BLEU"] and len(valid) == 6
    curve = table(md, "de-en: validation BLEU after each epoch")
    assert curve[0][:2] == ["model", "ep 1"] and [r[0] for r in curve[1:]] == [r[0] for r in t1[1:]]
    assert curve[5][len(cell["valid_curve"])] == f"{cell['valid_curve'][-1]:.2f}"  # A2D (per-query), last epoch
    losses = table(md, "de-en: training loss terms per epoch")
    assert losses[0][:2] == ["term (mean per epoch)", "ep 1"]
    assert "Vanilla KD: mu * KD" in [r[0] for r in losses] and "No KD: CE" not in [r[0] for r in losses]
    row = next(r for r in losses if r[0] == "A2D (per-query, convex): lambda * L_att")
    assert row[1] == f"{terms['weighted_att'][0]:.2f}"
    heads = table(md, "Table 3")
    assert [r[0] for r in heads[1:]] == ["2", "4"] and len(heads[0]) == 9
    assert [r[0] for r in table(md, "Table 4")[1:]] == ["head-wise (`a2d`)", "layer-wise (`a2d-layerwise`)"]
    assert [r[0] for r in table(md, "Table 5")[1:]] == ["all (`a2d`)", "dec-cross (`a2d-att-dec-cross`)"]
    every = table(md, "Every cell")
    assert len(every) == 1 + len(jobs) and every[0][4:8] == ["test BLEU", "95% CI", "chrF", "95% CI"]
    a2d_row = next(r for r in every if r[:3] == ["de-en", "a2d", "1"])
    assert a2d_row[6] == f"{cell['chrf']:.2f}" and a2d_row[7] == "{:.2f}-{:.2f}".format(*cell["chrf_ci"])
    assert cell["chrf_ci"][0] <= cell["chrf"] <= cell["chrf_ci"][1]
    assert (results / "quality-smoke-alignment-de-en.png").is_file()

    info = json.loads(json_path.read_text())
    assert len(info["cells"]) == len(jobs) and not any("hypotheses" in c for c in info["cells"])
    # per direction: the 8 other students vs nokd, 8 vs kd, a2d-heads-2 vs nokd-heads-2, and against `a2d` the
    # cell that names it (a2d-reference) and the Table 4/5 cells (a2d-layerwise, a2d-att-dec-cross)
    assert len(info["comparisons"]) == 2 * (8 + 8 + 1 + 3)
    variants = table(md, "Variants against the cell they vary")
    assert variants[0][:6] == ["variant", "vs", "de-en BLEU", "difference", "p", "valid difference"]
    assert [r[0] for r in variants[1:]] == ["A2D (reference, linear) (`a2d-reference`)",
                                            "A2D (layer-wise) (`a2d-layerwise`)", "A2D, dec-cross (`a2d-att-dec-cross`)"]
    ref_vs_a2d = next(c for c in info["comparisons"] if c["direction"] == "de-en" and c["system"] == "a2d-reference"
                      and c["baseline"] == "a2d")
    assert variants[1][1] == "`a2d`" and variants[1][3] == f"{ref_vs_a2d['delta']:+.2f}"
    assert variants[1][4] == f"{ref_vs_a2d['p_value']:.3f}"
    assert ref_vs_a2d["delta"] == pytest.approx(cell_bleu(info, "de-en/a2d-reference-s1") - cell_bleu(info, "de-en/a2d-s1"),
                                                abs=0.01)
    assert all(0.0 <= c["p_value"] <= 1.0 for c in info["comparisons"])

    # a second run trains and scores nothing
    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    for name in ("train", "distill", "distill_data", "prepare", "evaluate_model"):
        monkeypatch.setattr(runner, name, boom)
    monkeypatch.setattr(compare, "paired_bootstrap", boom)
    assert reproduce(argv) == 0
    assert md_path.read_text() == md

    # --report-only rebuilds both files from the results JSON alone (runs/ is not in the repository)
    shutil.move(runs / "smoke", tmp_path / "elsewhere")  # the run folders; the prepared data stays
    md_path.unlink()
    assert reproduce(argv + ["--report-only"]) == 0
    assert md_path.read_text() == md

    # the stored translations let the paired tests be redone without the run folders
    hyps = results / "quality-smoke-hyps"
    assert (hyps / "de-en" / "a2d-s1.hyp.gz").is_file() and not list(hyps.glob("*/*.ref*"))  # refs: corpus
    assert read_gz_lines(hyps / "de-en" / "a2d-s1.hyp.gz") == cell["hypotheses"]
    from a2d.evaluate import paired_bootstrap
    monkeypatch.setattr(compare, "paired_bootstrap", paired_bootstrap)
    json_path.write_text(json.dumps({**info, "comparisons": []}))
    assert reproduce(argv + ["--report-only"]) == 0
    redone = json.loads(json_path.read_text())["comparisons"]
    assert [(c["system"], c["baseline"], c["p_value"]) for c in redone] == \
        [(c["system"], c["baseline"], c["p_value"]) for c in info["comparisons"]]
    # a stored file that does not match the scored translations is ignored, with a note
    (hyps / "de-en" / "a2d-s1.hyp.gz").write_bytes(gz_lines(["tampered"] * 30))
    notes = []
    records, _ = collect(grid, runs, results, log=notes.append)
    assert "hypotheses" not in records["de-en/a2d-s1"]
    assert any("a2d-s1.hyp.gz" in n and "sha256 differs" in n for n in notes)
    assert "hypotheses" in records["de-en/kd-s1"]

    # cell.json files copied back from "another machine" merge; a finished run without cell.json is only scored
    shutil.move(tmp_path / "elsewhere", runs / "smoke")
    kd_run = runs / "smoke" / "de-en" / "kd-s1"
    (kd_run / "cell.json").unlink()
    from a2d.evaluate import evaluate_model
    monkeypatch.setattr(runner, "evaluate_model", evaluate_model)
    assert reproduce(argv + ["--only", "de-en/kd", "--dry-run"]) == 0
    assert reproduce(argv + ["--only", "de-en/kd"]) == 0
    assert json.loads((kd_run / "cell.json").read_text())["bleu"] == cell_bleu(info, "de-en/kd-s1")
    assert table(md_path.read_text(), "Table 1") == t1


def test_continue_from_goes_on_from_shorter_runs(tmp_path, data_root):
    """A grid with continue_from distils from the other grid's teacher and continues its finished shorter runs;
    a continued student is the student trained from the start for the same number of epochs, bit for bit."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw.pop("ablations")
    fixed = [o for o in raw["student_overrides"] if not o.startswith(("max_epochs", "max_steps"))] + ["max_steps=0"]
    short = {**raw, "name": "short", "directions": ["de-en"], "store_teachers": True,
             "student_overrides": fixed + ["max_epochs=1"],
             "methods": {"nokd": {"method": "none"}, "a2d": {"method": "a2d"}}}
    long = {**short, "name": "long", "continue_from": "short", "student_overrides": fixed + ["max_epochs=2"]}
    runs, results = tmp_path / "runs", tmp_path / "results"
    files = {}
    for grid in (short, long):
        files[grid["name"]] = tmp_path / f"{grid['name']}.yaml"
        files[grid["name"]].write_text(yaml.safe_dump(grid))
    argv = lambda name, *extra: [str(files[name]), "--runs-dir", str(runs), "--results-dir", str(results), *extra]
    assert reproduce(argv("short")) == 0

    lines = []
    dry_run(load_grid(files["long"]), runs, results, None, log=lines.append)
    assert any("de-en/teacher" in x and "done" in x for x in lines)
    assert any("de-en/a2d-s1" in x and "to continue short's run" in x for x in lines)
    assert reproduce(argv("long")) == 0
    assert not (runs / "long" / "de-en" / "teacher").exists()  # the short grid's teacher, not a new one
    info = json.loads((results / "quality-long.json").read_text())
    cells = {c["id"]: c for c in info["cells"]}
    short_info = {c["id"]: c for c in json.loads((results / "quality-short.json").read_text())["cells"]}
    assert cells["de-en/teacher"]["hyp_sha256"] == short_info["de-en/teacher"]["hyp_sha256"]
    for name in ("nokd", "a2d"):
        cell = cells[f"de-en/{name}-s1"]
        assert cell["continued_from"].endswith(f"short/de-en/{name}-s1") and len(cell["pieces"]) == 2
        assert cell["valid_epochs"] == 2 and cell["valid_curve"][0] == short_info[f"de-en/{name}-s1"]["valid_curve"][0]
    assert yaml.safe_load((runs / "long" / "de-en" / "a2d-s1" / "config.yaml").read_text())["max_epochs"] == 2

    # the same cells trained from the start (no shorter run to go on from): the same translations
    shutil.rmtree(runs / "long")
    for name in ("nokd", "a2d"):
        shutil.rmtree(runs / "short" / "de-en" / f"{name}-s1")
    assert reproduce(argv("long", "--results-dir", str(tmp_path / "fresh"))) == 0
    fresh = {c["id"]: c for c in json.loads((tmp_path / "fresh" / "quality-long.json").read_text())["cells"]}
    for name in ("nokd", "a2d"):
        cid = f"de-en/{name}-s1"
        assert "continued_from" not in fresh[cid] and len(fresh[cid]["pieces"]) == 1
        assert fresh[cid]["hyp_sha256"] == cells[cid]["hyp_sha256"], cid
        assert fresh[cid]["valid_curve"] == cells[cid]["valid_curve"], cid

    # another teacher setting than the continued grid's teacher is refused
    shutil.rmtree(runs / "long" / "de-en" / "a2d-s1")
    files["long"].write_text(yaml.safe_dump({**long, "teacher": {**long["teacher"],
                                                                  "overrides": long["teacher"]["overrides"] + ["lr=1e-3"]}}))
    with pytest.raises(UserError, match="teacher of grid short .* was trained with lr="):
        run_grid(load_grid(files["long"]), runs, results, ["de-en/a2d"], log=lambda _: None, redo=True)


def test_kd_cache_cells_train_from_a_cache_the_runner_builds(tmp_path, data_root):
    """A cell with kd_cache_topk trains with kd_cache= pointing at a cache of the grid's teacher, built once at the
    cell's kd_temperature (one per K, temperature and content: kd_cache_attention keeps the teacher's maps too),
    and the dry run says whether it is built."""
    grid_file = smoke_variant(tmp_path, "cached", methods={
        "kd": {"method": "kd"},
        "kd-top4": {"method": "kd", "kd_cache_topk": 4, "compare_to": "kd"},
        "a2d-t2-top4": {"method": "a2d", "kd_cache_topk": 4, "kd_cache_attention": True,
                        "overrides": ["kd_temperature=2"]}})
    runs, results = tmp_path / "runs", tmp_path / "results"
    grid = load_grid(grid_file)
    lines = []
    dry_run(grid, runs, results, None, log=lines.append)
    assert any("kd-cache-top4-t1 (to build)" in x for x in lines) and any("kd-cache-top4-t2-att (to build)" in x
                                                                          for x in lines)
    assert reproduce([str(grid_file), "--runs-dir", str(runs), "--results-dir", str(results)]) == 0
    base = runs / "cached" / "de-en"
    for cell, cache, temperature in (("kd-top4", "kd-cache-top4-t1", 1), ("a2d-t2-top4", "kd-cache-top4-t2-att", 2)):
        saved = yaml.safe_load((base / f"{cell}-s1" / "config.yaml").read_text())
        assert saved["kd_cache"] == str(base / cache)
        index = json.loads((base / cache / "index.json").read_text())
        assert index["complete"] and index["topk"] == 4 and index["temperature"] == temperature
        assert bool(index["attention"]) == cache.endswith("-att")
    assert not yaml.safe_load((base / "kd-s1" / "config.yaml").read_text()).get("kd_cache")  # the live teacher
    lines = []
    dry_run(load_grid(grid_file), runs, results, None, log=lines.append)
    assert sum("(built)" in x for x in lines) == 2



def test_a_finished_teacher_goes_on_when_the_grid_raises_its_budget(tmp_path, data_root):
    """A teacher that ended at max_epochs goes on from its last checkpoint when the grid raises max_epochs: it is the
    teacher trained for the new budget from the start, bit for bit, scored and stored again. Once a student was
    distilled from it, raising the budget again is refused."""
    def teacher(epochs):
        return {"preset": "tiny-teacher", "overrides": ["encoder_layers=2", "decoder_layers=2", "d_model=32",
                                                        "ffn_dim=64", "max_tokens=8192", f"max_epochs={epochs}",
                                                        "warmup_updates=10", "lr=3e-3", "valid_max_sentences=20"]}

    runs, results = tmp_path / "runs", tmp_path / "results"
    grid = lambda epochs, name="long": smoke_variant(tmp_path, name, store_teachers=True, teacher=teacher(epochs),
                                                     methods={"kd": {"method": "kd"}})
    argv = lambda path, *extra: [str(path), "--runs-dir", str(runs), "--results-dir", str(results), *extra]
    assert reproduce(argv(grid(1), "--only", "de-en/teacher")) == 0
    run = runs / "long" / "de-en" / "teacher"
    first = json.loads((run / "cell.json").read_text())
    assert first["valid_epochs"] == 1

    lines = []
    dry_run(load_grid(grid(2)), runs, results, ["de-en/teacher"], log=lines.append)
    assert any("de-en/teacher" in x and "to go on (max_epochs 1 -> 2)" in x for x in lines), lines
    assert reproduce(argv(grid(2), "--only", "de-en/teacher")) == 0
    cell = json.loads((run / "cell.json").read_text())
    assert cell["valid_epochs"] == 2 and cell["valid_curve"][0] == first["valid_curve"][0] and len(cell["pieces"]) == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["max_epochs"] == 2
    stored = json.loads((results / "quality-long-teachers" / "de-en" / "teacher.json").read_text())
    info = {c["id"]: c for c in json.loads((results / "quality-long.json").read_text())["cells"]}
    assert info["de-en/teacher"]["hyp_sha256"] == stored["hyp_sha256"] == cell["hyp_sha256"]

    # the same teacher trained for 2 epochs from the start
    assert reproduce(argv(grid(2, "fresh"), "--only", "de-en/teacher")) == 0
    fresh = json.loads((runs / "fresh" / "de-en" / "teacher" / "cell.json").read_text())
    assert fresh["hyp_sha256"] == cell["hyp_sha256"] and fresh["valid_curve"] == cell["valid_curve"]
    losses = lambda path: [r["valid_loss"] for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines())
                           if r["type"] == "valid"]
    assert len(losses(run)) == 2 and losses(runs / "fresh" / "de-en" / "teacher") == losses(run)

    # a student distilled from it: the teacher is kept as it is
    assert reproduce(argv(grid(2), "--only", "de-en/kd")) == 0
    with pytest.raises(UserError, match="de-en/kd-s1 were distilled from it as it is"):
        run_grid(load_grid(grid(3)), runs, results, ["de-en/teacher"], log=lambda _: None)
    assert (run / "cell.json").is_file()
