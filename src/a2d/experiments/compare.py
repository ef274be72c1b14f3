"""A grid's results put together: merged from the results JSON and the run folders, paired-tested, and the
best A2D student chosen (on validation) for the alignment figure.

Results found in ``RUNS/<name>/*/*/cell.json`` are merged with those already in ``RESULTS/quality-<name>.json``,
so pieces run elsewhere are merged by copying their ``cell.json`` files (each holds its hypotheses and the
references, all the paired test needs) into the same layout.
"""
from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path

from a2d.analysis import format_summary, plot_alignment
from a2d.evaluate import chrf_with_ci, paired_bootstrap
from a2d.experiments.files import read_json
from a2d.experiments.grid import BASELINES, TEACHER, Grid
from a2d.experiments.plan import CELL_FILE, run_metrics
from a2d.experiments.stores import load_hypotheses, results_paths
from a2d.methods import METHODS
from a2d.rundir import method_files


def collect(grid: Grid, runs: Path, results: Path, log=print) -> tuple[dict[str, dict], dict]:
    """All results: those in the results JSON, then every ``cell.json`` under ``RUNS/<name>`` (these win).

    Records from the JSON get their hypotheses back from ``RESULTS/quality-<name>-hyps`` where stored.
    """
    json_path, _ = results_paths(grid, results)
    old = read_json(json_path, {}) or {}
    records = {r["id"]: r for r in old.get("cells", [])}
    load_hypotheses(grid, runs, results, records, log)
    for path in sorted((runs / grid.name).glob(f"*/*/{CELL_FILE}")):
        rec = read_json(path)
        if rec.get("grid", grid.name) == grid.name and "id" in rec:
            for key in ("valid_curve", "loss_terms"):  # cells scored before these were recorded
                if key not in rec:
                    rec[key] = run_metrics(path.parent)[key]
            records[rec["id"]] = rec
    if grid.continue_from:
        _add_source_teachers(grid, runs, results, records, log)
    for rec in records.values():
        _add_chrf_ci(rec, log)
    return records, old


def _add_chrf_ci(record: dict, log) -> None:
    """A result scored before chrF had a confidence interval gets it from its stored hypotheses (the same bootstrap
    as :func:`a2d.evaluate.score`), when the chrF they give is the one recorded; otherwise it stays without."""
    if "chrf_ci" in record or "hypotheses" not in record or "references" not in record:
        return
    chrf, ci = chrf_with_ci(record["hypotheses"], record["references"])
    if abs(chrf - record["chrf"]) > 1e-6:
        log(f"note: {record['id']}: its hypotheses give chrF {chrf:.4f}, not the {record['chrf']:.4f} "
            "recorded; left without a chrF interval")
        return
    record["chrf_ci"] = ci


def _add_source_teachers(grid: Grid, runs: Path, results: Path, records: dict[str, dict], log) -> None:
    """A grid that continues another shares its teacher: the teacher's record comes from that grid's teacher
    run (``RUNS/<continue_from>/<dir>/teacher/cell.json``) or, when the run is gone, from that grid's results."""
    source = None
    for d in grid.directions:
        tid = f"{d}/{TEACHER}"
        path = runs / grid.teacher_grid / d / TEACHER / CELL_FILE
        if path.is_file():
            records[tid] = read_json(path)
            continue
        if tid in records:
            continue
        if source is None:
            source, _ = collect(replace(grid, name=grid.teacher_grid, continue_from=None), runs, results, log)
        if tid in source:
            records[tid] = source[tid]


def distilled(record: dict) -> bool:
    """Whether a result's student had a teacher (a method this version does not know: assume it had)."""
    method = record.get("method")
    if record.get("role") != "student" or not method:
        return False
    cls = METHODS.get(method)
    return cls is None or cls.needs_teacher or cls.generated_data


def comparisons(grid: Grid, records: dict[str, dict], old: list[dict], log) -> list[dict]:
    """Paired bootstrap of each student against the No-KD and the KD cell of the same direction and seed, and of
    each cell that names one (``compare_to``; the ablation cells: their base) against the cell it varies.

    A comparison whose two hypothesis files are unchanged is taken from the previous results JSON.
    """
    pairs = []
    for d in grid.directions:
        for seed in grid.seeds:
            for role in BASELINES:
                base = grid.baseline(role)
                if base:
                    pairs += [(d, seed, base, c) for c in grid.cells if c != base]
            for _, nokd_name, a2d_name in grid.heads_rows:
                if nokd_name and nokd_name != grid.baselines.nokd:
                    pairs.append((d, seed, nokd_name, a2d_name))
            pairs += [(d, seed, c.compare_to, c.name) for c in grid.cells.values() if c.compare_to]
    cache = {(c["direction"], c["seed"], c["baseline"], c["system"]): c for c in old}
    out, todo = [], {}
    for d, seed, base, system in dict.fromkeys(pairs):
        b, s = records.get(f"{d}/{base}-s{seed}"), records.get(f"{d}/{system}-s{seed}")
        if b is None or s is None:
            continue
        hit = cache.get((d, seed, base, system))
        if (hit and hit.get("baseline_sha256") == b["hyp_sha256"] and hit.get("system_sha256") == s["hyp_sha256"]
                and hit.get("n_samples") == grid.bootstrap_samples):
            out.append(hit)
        elif "hypotheses" in b and "hypotheses" in s and b.get("ref_sha256") == s.get("ref_sha256"):
            todo.setdefault((d, seed, base), []).append(system)
        else:
            log(f"note: {d} seed {seed}: {system} vs {base} not compared (hypotheses of one side not here, "
                "or scored on other references)")
    for (d, seed, base), systems in todo.items():
        b = records[f"{d}/{base}-s{seed}"]
        res = paired_bootstrap(b["hypotheses"], {s: records[f"{d}/{s}-s{seed}"]["hypotheses"] for s in systems},
                               b["references"], n_samples=grid.bootstrap_samples)
        for system, r in res.items():
            out.append({"direction": d, "seed": seed, "baseline": base, "system": system,
                        "p_value": r["p_value"], "chrf_p_value": r["chrf_p_value"], "bleu": r["bleu"],
                        "baseline_bleu": r["baseline_bleu"], "delta": r["delta"], "n_samples": grid.bootstrap_samples,
                        "baseline_sha256": b["hyp_sha256"],
                        "system_sha256": records[f"{d}/{system}-s{seed}"]["hyp_sha256"]})
    order = {d: i for i, d in enumerate(grid.directions)}
    names = {c: i for i, c in enumerate(grid.cells)}
    out.sort(key=lambda c: (order.get(c["direction"], 99), c["seed"], names.get(c["baseline"], 99),
                            names.get(c["system"], 99)))
    return out


def best_a2d(grid: Grid, records: dict[str, dict], direction: str) -> tuple[str, int, float] | None:
    """The Table 1 A2D cell (a method that learns alignments) with the best mean validation BLEU, and its best
    seed: (cell, seed, valid BLEU)."""
    best = None
    for cell in grid.cells.values():
        if not cell.main or not cell.method_class.alignment:
            continue
        recs = [(s, records.get(f"{direction}/{cell.name}-s{s}")) for s in grid.seeds]
        recs = [(s, r) for s, r in recs if r and r.get("valid_best_bleu") is not None]
        if not recs:
            continue
        mean = statistics.fmean(r["valid_best_bleu"] for _, r in recs)
        seed = max(recs, key=lambda sr: sr[1]["valid_best_bleu"])[0]
        if best is None or mean > best[2]:
            best = (cell.name, seed, mean)
    return best


def alignment_figures(grid: Grid, records: dict[str, dict], results: Path, old: dict, log) -> dict:
    """``RESULTS/quality-<name>-alignment-<dir>.png``: the AAM weights of the best A2D student of each direction
    (drawn again only when another student is best, or its translations changed)."""
    out = dict(old or {})
    for d in grid.directions:
        best = best_a2d(grid, records, d)
        if best is None:
            continue
        cell, seed, valid = best
        run = Path(records[f"{d}/{cell}-s{seed}"]["run"])
        png = results / f"quality-{grid.name}-alignment-{d}.png"
        prev = out.get(d)
        if prev and prev.get("cell") == cell and prev.get("seed") == seed and png.is_file() and \
                prev.get("hyp_sha256") == records[f"{d}/{cell}-s{seed}"]["hyp_sha256"]:
            continue
        info = method_files(run)[0]
        if not info.is_file():
            log(f"note: {d}: the alignment figure needs {info} (the run is on another machine?)")
            continue
        summary = plot_alignment(run, png)
        out[d] = {"cell": cell, "seed": seed, "valid_bleu": valid, "png": png.name, "summary": summary["kinds"],
                  "aam": summary["aam"], "granularity": summary["granularity"],
                  "hyp_sha256": records[f"{d}/{cell}-s{seed}"]["hyp_sha256"]}
        out[d]["summary_text"] = format_summary(summary)
    return out


__all__ = ["collect", "comparisons", "best_a2d", "alignment_figures", "distilled"]
