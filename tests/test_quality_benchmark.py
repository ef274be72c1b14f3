"""benchmarks/quality.py end to end on benchmarks/grids/smoke.yaml: tiny models, a few updates, 30 test sentences."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "benchmarks" / "grids" / "smoke.yaml"


def load_script():
    """benchmarks/quality.py as a fresh module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def table(md: str, title: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table under ``## title``, header first, separator dropped."""
    lines = md.split(f"## {title}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_quality_grid_runs_skips_and_reports(tmp_path, data_root, monkeypatch):
    q = load_script()
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [str(SMOKE), "--runs-dir", str(runs), "--results-dir", str(results)]
    grid = q.load_grid(SMOKE)
    jobs = q.plan(grid, runs)
    # teacher, 5 Table 1 cells, then a2d-heads-2, nokd-heads-2, a2d-layerwise, a2d-att-dec-cross
    assert len(jobs) == 2 * (1 + 5 + 4)

    assert q.main(argv) == 0
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
    assert len(table(md, "Every cell")) == 1 + len(jobs)
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

    for name in ("train", "distill", "distill_data", "prepare", "evaluate_model", "paired_bootstrap"):
        monkeypatch.setattr(q, name, boom)
    assert q.main(argv) == 0
    assert md_path.read_text() == md

    # --report-only rebuilds both files from the results JSON alone (runs/ is not in the repository)
    shutil.move(runs / "smoke", tmp_path / "elsewhere")  # the run folders; the prepared data stays
    md_path.unlink()
    assert q.main(argv + ["--report-only"]) == 0
    assert md_path.read_text() == md

    # the stored translations let the paired tests be redone without the run folders
    hyps = results / "quality-smoke-hyps"
    assert (hyps / "de-en" / "a2d-s1.hyp.gz").is_file() and not list(hyps.glob("*/*.ref*"))  # refs: corpus
    assert q._read_gz_lines(hyps / "de-en" / "a2d-s1.hyp.gz") == cell["hypotheses"]
    from a2d.evaluate import paired_bootstrap
    monkeypatch.setattr(q, "paired_bootstrap", paired_bootstrap)
    json_path.write_text(json.dumps({**info, "comparisons": []}))
    assert q.main(argv + ["--report-only"]) == 0
    redone = json.loads(json_path.read_text())["comparisons"]
    assert [(c["system"], c["baseline"], c["p_value"]) for c in redone] == \
        [(c["system"], c["baseline"], c["p_value"]) for c in info["comparisons"]]
    # a stored file that does not match the scored translations is ignored, with a note
    (hyps / "de-en" / "a2d-s1.hyp.gz").write_bytes(q._gz_lines(["tampered"] * 30))
    notes = []
    records, _ = q.collect(grid, runs, results, log=notes.append)
    assert "hypotheses" not in records["de-en/a2d-s1"]
    assert any("a2d-s1.hyp.gz" in n and "sha256 differs" in n for n in notes)
    assert "hypotheses" in records["de-en/kd-s1"]

    # cell.json files copied back from "another machine" merge; a finished run without cell.json is only scored
    shutil.move(tmp_path / "elsewhere", runs / "smoke")
    kd_run = runs / "smoke" / "de-en" / "kd-s1"
    (kd_run / "cell.json").unlink()
    from a2d.evaluate import evaluate_model
    monkeypatch.setattr(q, "evaluate_model", evaluate_model)
    assert q.main(argv + ["--only", "de-en/kd", "--dry-run"]) == 0
    assert q.main(argv + ["--only", "de-en/kd"]) == 0
    assert json.loads((kd_run / "cell.json").read_text())["bleu"] == cell_bleu(info, "de-en/kd-s1")
    assert table(md_path.read_text(), "Table 1") == t1


def cell_bleu(info: dict, cell_id: str) -> float:
    return next(c["bleu"] for c in info["cells"] if c["id"] == cell_id)


def test_grid_errors(tmp_path):
    q = load_script()
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("nokd: {method: none}", "nokd: {method: nope}"))
    assert q.main([str(bad), "--dry-run"]) == 2
    bad.write_text(SMOKE.read_text().replace("kd: {method: kd}", "kd: {method: kd, overrides: [lr=fast]}"))
    with pytest.raises(q.UserError, match="cell kd"):
        q.load_grid(bad)
    bad.write_text(SMOKE.read_text().replace("compare_to: a2d", "compare_to: a2d-typo"))
    with pytest.raises(q.UserError, match="a2d-reference: compare_to 'a2d-typo'"):
        q.load_grid(bad)
    bad.write_text(SMOKE.read_text() + "colour: blue\n")
    with pytest.raises(q.UserError, match="unknown key"):
        q.load_grid(bad)


def test_cells_of_some_seeds_and_ablation_tables_over_shared_seeds(tmp_path):
    """An ablation run on seed 1 only is set beside its base's seed-1 result, not the mean of the base's seeds."""
    q = load_script()
    path = tmp_path / "two-seeds.yaml"
    text = SMOKE.read_text().replace("seeds: [1]", "seeds: [1, 2]").replace("directions: [de-en, en-de]",
                                                                            "directions: [de-en]")
    path.write_text(text + "  seeds: [1]\n")  # the ablation cells run for seed 1 only
    grid = q.load_grid(path)
    jobs = [j.id for j in q.plan(grid, tmp_path)]
    assert len(jobs) == 1 + 5 * 2 + 4 and "de-en/a2d-layerwise-s1" in jobs and "de-en/a2d-layerwise-s2" not in jobs

    def rec(cell, seed, bleu, valid):
        return {"id": f"de-en/{cell}-s{seed}", "direction": "de-en", "cell": cell, "seed": seed, "method": "a2d",
                "bleu": bleu, "bleu_ci": [bleu - 1, bleu + 1], "bleu_ci_halfwidth": 1.0, "chrf": 50.0,
                "valid_best_bleu": valid, "final_att": 1.0, "updates": 10, "train_seconds": 60.0, "pieces": [],
                "hardware": "cpu", "commit": "abc", "finished": "now", "signature": "sig", "valid_curve": [valid]}

    records = {r["id"]: r for r in [rec("nokd", 1, 25.0, 24.0), rec("nokd", 2, 26.0, 25.0), rec("a2d", 1, 30.0, 31.0),
                                    rec("a2d", 2, 40.0, 41.0), rec("a2d-layerwise", 1, 29.0, 30.0)]}
    comps = [{"direction": "de-en", "seed": 1, "baseline": "a2d", "system": "a2d-layerwise", "p_value": 0.3,
              "delta": -1.0}]
    md = q.render_markdown(grid, "two-seeds.yaml", records, comps, {})
    t4 = table(md, "Table 4")
    assert t4[0][1:4] == ["de-en BLEU (seed 1)", "p vs `a2d`", "p vs No KD"]
    assert t4[1][:3] == ["head-wise (`a2d`)", "30.00 ± 1.00", "·"]  # seed 1 only, not the mean 35.00
    assert t4[2][:5] == ["layer-wise (`a2d-layerwise`)", "29.00 ± 1.00", "0.300", "–", "30.00"]
    t5 = table(md, "Table 5")  # only its `all` row (= a2d) has run: both seeds
    assert t5[0][1] == "de-en BLEU" and t5[1][1] == "35.00 ± 1.00 (mean of 2)" and t5[2][1] == "–"
    variants = table(md, "Variants against the cell they vary")
    row = next(r for r in variants if r[0].endswith("(`a2d-layerwise`)"))
    assert row[2:6] == ["29.00 ± 1.00", "-1.00", "0.300", "-1.00"]  # valid 30 vs a2d's seed-1 31
    assert "5 of 15 cells done" in md

    path.write_text(text + "  seeds: [3]\n")
    with pytest.raises(q.UserError, match="ablations: seeds: expected a list of some of the grid's seeds"):
        q.load_grid(path)
    # a Table 1 cell may run for some seeds too
    path.write_text(text.replace("kd: {method: kd}", "kd: {method: kd, seeds: [2]}"))
    grid = q.load_grid(path)
    assert [j.id for j in q.plan(grid, tmp_path) if "/kd-" in j.id] == ["de-en/kd-s2"]
    records["de-en/kd-s2"] = {**rec("kd", 2, 27.0, 26.0), "method": "kd"}
    kd_row = next(r for r in table(q.render_markdown(grid, "x.yaml", records, [], {}), "Table 1") if r[0] == "Vanilla KD")
    assert kd_row[1] == "27.00 ± 1.00"  # its one planned seed, not "(1/2 seeds)"
    path.write_text(text.replace("kd: {method: kd}", "kd: {method: kd, seeds: [1, 1]}"))
    with pytest.raises(q.UserError, match="methods: kd: seeds: expected a list of some"):
        q.load_grid(path)


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grids_load(path):
    """Every grid in benchmarks/grids/ passes the checks (methods, presets, overrides) a run makes first."""
    q = load_script()
    grid = q.load_grid(path)
    assert grid.cells and grid.directions
    for cell in grid.cells.values():
        grid.cell_config(cell, grid.seeds[0])  # raises on a bad override


def test_stored_teacher_lets_a_grid_go_on(tmp_path, data_root, monkeypatch):
    """With store_teachers, students trained after the run folders are gone are distilled from the same teacher;
    without a stored copy, a teacher with distilled students is never silently trained again."""
    import yaml

    q = load_script()
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(name="keep", directions=["de-en"], store_teachers=True, methods={"kd": {"method": "kd"}})
    raw.pop("ablations")
    grid_file = tmp_path / "keep.yaml"
    grid_file.write_text(yaml.safe_dump(raw))
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [str(grid_file), "--runs-dir", str(runs), "--results-dir", str(results)]
    assert q.main(argv) == 0

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
    q.dry_run(q.load_grid(grid_file), runs, results, None, log=lines.append)
    assert any("de-en/teacher" in x and "stored copy" in x for x in lines)
    assert any("de-en/kd-s1" in x and "done" in x for x in lines) and lines[-1].startswith("0 cell(s)")

    def no_teacher_training(*args, **kwargs):
        raise AssertionError("the teacher was trained again")

    monkeypatch.setattr(q, "train", no_teacher_training)
    assert q.main(argv) == 0
    # a student trained now (--redo) is distilled from the stored copy, not from a new teacher
    seen = []
    distill = q.distill
    monkeypatch.setattr(q, "distill", lambda cfg, data, out, teacher, **kw: seen.append(teacher) or
                        distill(cfg, data, out, teacher, **kw))
    # on a new machine the data is gone too: it is prepared again with the stored teacher's vocabulary
    # (a newly trained SentencePiece model has the same pieces but not the same bytes, and is refused)
    data = q.data_dir(q.load_grid(grid_file), runs, "de-en")
    shutil.rmtree(data)
    assert q.main(argv + ["--only", "de-en/kd", "--redo"]) == 0
    assert seen == [store] and (runs / "keep" / "de-en" / "kd-s1" / "cell.json").is_file()
    assert (data / "sentencepiece.model").read_bytes() == (store / "sentencepiece.model").read_bytes()
    assert json.loads((data / "meta.json").read_text())["vocab_from"]["path"] == str((store / "sentencepiece.model").resolve())
    # data prepared with another vocabulary is refused with the way out, before any training
    (data / "sentencepiece.model").write_bytes(b"other")
    shutil.rmtree(runs / "keep" / "de-en" / "kd-s1")
    with pytest.raises(q.UserError, match="another SentencePiece model than the stored teacher's"):
        q.run_grid(q.load_grid(grid_file), runs, results, ["de-en/kd"], log=lambda _: None, redo=True)
    shutil.rmtree(data)

    # a changed stored file is refused; with no stored copy, the teacher of existing students is not replaced
    shutil.rmtree(runs / "keep")
    (store / "config.json").write_text("{}")
    with pytest.raises(q.UserError, match="changed since the teacher was stored"):
        q.run_grid(q.load_grid(grid_file), runs, results, ["de-en/kd"], log=lambda _: None, redo=True)
    shutil.rmtree(store)
    with pytest.raises(q.UserError, match="holds the teacher that de-en/kd-s1 were distilled from"):
        q.run_grid(q.load_grid(grid_file), runs, results, ["de-en/kd"], log=lambda _: None, redo=True)
    assert not (runs / "keep" / "de-en" / "teacher").exists()


def test_continue_from_goes_on_from_shorter_runs(tmp_path, data_root):
    """A grid with continue_from distils from the other grid's teacher and continues its finished shorter runs;
    a continued student is the student trained from the start for the same number of epochs, bit for bit."""
    import yaml

    q = load_script()
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
    assert q.main(argv("short")) == 0

    lines = []
    q.dry_run(q.load_grid(files["long"]), runs, results, None, log=lines.append)
    assert any("de-en/teacher" in x and "done" in x for x in lines)
    assert any("de-en/a2d-s1" in x and "to continue short's run" in x for x in lines)
    assert q.main(argv("long")) == 0
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
    assert q.main(argv("long", "--results-dir", str(tmp_path / "fresh"))) == 0
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
    with pytest.raises(q.UserError, match="teacher of grid short .* was trained with lr="):
        q.run_grid(q.load_grid(files["long"]), runs, results, ["de-en/a2d"], log=lambda _: None, redo=True)
