"""a2d.experiments.report: the markdown tables, from results records."""
from __future__ import annotations

import pytest

from a2d.experiments.grid import load_grid
from a2d.experiments.plan import plan
from a2d.experiments.report import render_markdown
from a2d.utils import UserError
from tests.experiments.common import SMOKE, table


def test_cells_of_some_seeds_and_ablation_tables_over_shared_seeds(tmp_path):
    """An ablation run on seed 1 only is set beside its base's seed-1 result, not the mean of the base's seeds."""
    path = tmp_path / "two-seeds.yaml"
    text = SMOKE.read_text().replace("seeds: [1]", "seeds: [1, 2]").replace("directions: [de-en, en-de]",
                                                                            "directions: [de-en]")
    path.write_text(text + "  seeds: [1]\n")  # the ablation cells run for seed 1 only
    grid = load_grid(path)
    jobs = [j.id for j in plan(grid, tmp_path)]
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
    md = render_markdown(grid, "two-seeds.yaml", records, comps, {})
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
    with pytest.raises(UserError, match="ablations: seeds: expected a list of some of the grid's seeds"):
        load_grid(path)
    # a Table 1 cell may run for some seeds too
    path.write_text(text.replace("kd: {method: kd}", "kd: {method: kd, seeds: [2]}"))
    grid = load_grid(path)
    assert [j.id for j in plan(grid, tmp_path) if "/kd-" in j.id] == ["de-en/kd-s2"]
    records["de-en/kd-s2"] = {**rec("kd", 2, 27.0, 26.0), "method": "kd"}
    kd_row = next(r for r in table(render_markdown(grid, "x.yaml", records, [], {}), "Table 1") if r[0] == "Vanilla KD")
    assert kd_row[1] == "27.00 ± 1.00"  # its one planned seed, not "(1/2 seeds)"
    path.write_text(text.replace("kd: {method: kd}", "kd: {method: kd, seeds: [1, 1]}"))
    with pytest.raises(UserError, match="methods: kd: seeds: expected a list of some"):
        load_grid(path)
