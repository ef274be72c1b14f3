"""a2d.experiments.grid: grid files read into dataclasses, every mistake reported with its file and key."""
from __future__ import annotations

import re

import pytest

from a2d.experiments.grid import BaselinesSpec, CellSpec, GridSpec, TeacherSpec, load_grid, read_spec
from a2d.utils import UserError
from tests.experiments.common import REPO, SMOKE, reproduce, smoke_variant


def test_grid_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("nokd: {method: none}", "nokd: {method: nope}"))
    assert reproduce([str(bad), "--dry-run"]) == 2
    bad.write_text(SMOKE.read_text().replace("kd: {method: kd}", "kd: {method: kd, overrides: [lr=fast]}"))
    with pytest.raises(UserError, match="cell kd"):
        load_grid(bad)
    bad.write_text(SMOKE.read_text().replace("compare_to: a2d", "compare_to: a2d-typo"))
    with pytest.raises(UserError, match="a2d-reference: compare_to 'a2d-typo'"):
        load_grid(bad)
    bad.write_text(SMOKE.read_text() + "colour: blue\n")
    with pytest.raises(UserError, match="unknown key"):
        load_grid(bad)


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "grids").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_grids_load(path):
    """Every grid in benchmarks/grids/ passes the checks (methods, presets, overrides) a run makes first."""
    grid = load_grid(path)
    assert grid.cells and grid.directions
    for cell in grid.cells.values():
        grid.cell_config(cell, grid.seeds[0])  # raises on a bad override


def test_read_spec_names_the_file_and_the_key():
    spec = read_spec(GridSpec, {"name": "g", "teacher": {"preset": "tiny-teacher"}, "student_preset": "tiny-student",
                                "methods": {"kd": {"method": "kd", "overrides": ["lr=1e-3", 3]}}}, "g.yaml")
    assert spec.teacher == TeacherSpec("tiny-teacher", []) and spec.vocab_size == 8000 and spec.seeds == [1]
    assert spec.methods == {"kd": CellSpec("kd", ["lr=1e-3", "3"])} and spec.baselines.nokd is None
    base = {"name": "g", "teacher": {"preset": "t"}, "student_preset": "s", "methods": {"a": {"method": "a"}}}
    assert read_spec(GridSpec, {**base, "baselines": None}, "g.yaml").baselines == BaselinesSpec()
    for raw, message in [({"vocab_size": 3}, "g.yaml: vocab_size: expected an integer >= 5, got 3"),
                         ({"max_train": "all"}, "g.yaml: max_train: expected an integer >= 1 or null, got 'all'"),
                         ({"store_teachers": "yes"}, "g.yaml: store_teachers: expected true or false, got 'yes'"),
                         ({"teacher": "tiny"}, "g.yaml: teacher: expected {preset: NAME"),
                         ({"teacher": {"overrides": []}}, "g.yaml: teacher: missing key 'preset'"),
                         ({"methods": {"kd": {"method": "kd", "lr": 1}}}, "g.yaml: methods: kd: unknown key"),
                         ({"ablations": {"att_kinds": ["enc"]}}, "g.yaml: ablations: att_kinds: choose from all"),
                         ({"ablations": {"heads": [0]}}, "g.yaml: ablations: heads: expected a list of positive")]:
        with pytest.raises(UserError, match="^" + re.escape(message)):
            read_spec(GridSpec, {**base, **raw}, "g.yaml")
    with pytest.raises(UserError, match="g.yaml: missing key 'methods'"):
        read_spec(GridSpec, {"name": "g", "teacher": {"preset": "t"}, "student_preset": "s"}, "g.yaml")


def test_method_facts_come_from_the_method_classes():
    """Labels, the baselines, who needs the teacher: said by each method's class, not by its name."""
    grid = load_grid(SMOKE)
    cells = grid.cells
    assert grid.baselines.nokd == "nokd" and grid.baselines.kd == "kd"
    assert [cells[n].needs_teacher for n in ("nokd", "kd", "seq-kd", "a2d")] == [False, True, True, True]
    assert cells["seq-kd"].method_class.generated_data and not cells["kd"].method_class.generated_data
    assert cells["seq-kd"].label == "Sequence KD" and cells["a2d-layerwise"].label == "A2D (layer-wise)"


def test_grid_errors_name_the_file_and_the_cell(tmp_path, capsys):
    """An unknown method in a cell, or a language the corpus lacks, was reported as if an option were wrong
    (--method nope, --tgt xx: options a2d reproduce does not have); it names the grid file and the cell now."""
    bad = tmp_path / "bad.yaml"
    for old, new, says in [
            ("nokd: {method: none}", "nokd: {method: nope}", f"{bad}: methods: nokd: method: unknown method 'nope' "
                                                             "(choose from a2d, "),
            ("name: smoke", "name: smoke\ndirections: [de-xx]", f"{bad}: direction 'de-xx': multi30k has no language "
                                                                 "'xx' (choose from de, en)"),
            ("name: smoke", "name: smoke\ndirections: [en-en]", f"{bad}: direction 'en-en': source and target "
                                                                 "languages must differ"),
            ("corpus: multi30k", "corpus: wmt99", f"{bad}: corpus: unknown corpus 'wmt99' (choose from ")]:
        text = SMOKE.read_text()
        if "directions:" in new:
            text = re.sub(r"(?m)^directions:.*\n", "", text)
        assert old in text
        bad.write_text(text.replace(old, new, 1))
        assert reproduce([str(bad), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"a2d: error: {says}") and err.count("\n") == 1, err
        assert "--method" not in err and "--src" not in err and "--tgt" not in err and "--corpus" not in err


def test_seq_kd_engine_is_passed_to_distill_data(tmp_path, monkeypatch):
    """seq_kd_engine (default hf): checked when read, names the data folder (CTranslate2's apart from
    Hugging Face's), and is what the runner asks distill_data to decode with."""
    from a2d.experiments import runner
    from a2d.experiments.grid import SEQ_KD_ENGINES
    from a2d.experiments.plan import seqkd_dir
    from a2d.recipes.distill_data import ENGINES

    assert SEQ_KD_ENGINES == ENGINES
    base = {"name": "g", "teacher": {"preset": "t"}, "student_preset": "s", "methods": {"a": {"method": "a"}}}
    assert read_spec(GridSpec, base, "g.yaml").seq_kd_engine == "hf"
    with pytest.raises(UserError, match=re.escape("g.yaml: seq_kd_engine: choose from hf, ct2-float32, ct2-int8, "
                                                  "got 'ct2'")):
        read_spec(GridSpec, {**base, "seq_kd_engine": "ct2"}, "g.yaml")
    grid = load_grid(SMOKE)
    assert seqkd_dir(grid, tmp_path, "de-en") == tmp_path / grid.name / "de-en" / f"seqkd-data-b{grid.seq_kd_beam}"
    calls = []

    def fake(teacher, data, out, **kw):
        calls.append(kw)
        (out / "meta.json").parent.mkdir(parents=True)
        (out / "meta.json").write_text("{}")

    monkeypatch.setattr(runner, "distill_data", fake)
    grid.seq_kd_engine = "ct2-int8"
    out = runner.ensure_seqkd_data(grid, tmp_path, "de-en", tmp_path / "data", tmp_path / "teacher", log=lambda *a: None)
    assert out.name == f"seqkd-data-b{grid.seq_kd_beam}-ct2-int8"
    assert calls == [{"beam": grid.seq_kd_beam, "engine": "ct2-int8", "log": calls[0]["log"]}]
    timing = out.with_name(out.name + ".timing.json")
    assert '"engine": "ct2-int8"' in timing.read_text()


@pytest.mark.parametrize("cell, message", [
    ({"method": "none", "kd_cache_topk": 4}, "method none does not read a teacher cache"),
    ({"method": "kd", "kd_cache_topk": 0}, "kd_cache_topk: expected an integer >= 1"),
    ({"method": "kd", "overrides": ["kd_cache=/x"]}, "the runner builds the cache; use kd_cache_topk"),
    ({"method": "a2d", "kd_cache_attention": True}, "kd_cache_attention: a cache needs kd_cache_topk: K too"),
    ({"method": "kd", "kd_cache_topk": 4, "kd_cache_attention": True}, "method kd reads no attention maps"),
])
def test_kd_cache_cells_refuse_what_cannot_work(tmp_path, cell, message):
    with pytest.raises(UserError, match=message):
        load_grid(smoke_variant(tmp_path, "bad", methods={"c": cell}))
