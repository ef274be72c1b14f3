"""The results files of a grid: ``RESULTS/quality-<name>.json`` and ``RESULTS/quality-<name>.md``.

The JSON holds every cell's result (hypotheses left out), the paired bootstrap comparisons and the alignment
figures. The markdown: Table 1 (rows: teacher, then the grid's ``methods`` in order; per direction
``BLEU ± half-width of the 95% CI`` and the paired bootstrap p-values against the No-KD and the vanilla-KD
student of the same seed), the validation BLEU of every student (defaults are chosen there, never on test),
the variants against the cell they vary, validation curves and loss terms per epoch, the ablation tables
(Table 3 heads with the final L_att, Table 4 head-wise vs layer-wise, Table 5 attention kinds; each only when
one of its cells exists), the alignment figure of the A2D student that is best on validation, and a per-cell
table with valid BLEU, final L_att, training time, hardware, commit and finish time.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from a2d.experiments.compare import alignment_figures, best_a2d, collect, comparisons
from a2d.experiments.grid import TEACHER, Grid
from a2d.experiments.stores import results_paths, save_hypotheses
from a2d.provenance import CHECKOUT, now
from a2d.utils import atomic_write_text

DASH = "–"


def write_report(grid: Grid, runs: Path, results: Path, log, figures: bool = True) -> tuple[Path, Path]:
    records, old = collect(grid, runs, results, log)
    save_hypotheses(grid, results, records)
    comps = comparisons(grid, records, old.get("comparisons", []), log)
    alignment = old.get("alignment", {})
    if figures:
        alignment = alignment_figures(grid, records, results, alignment, log)
    json_path, md_path = results_paths(grid, results)
    grid_file = str(grid.path)  # relative to the checkout when it lies there (the shipped grids do)
    if CHECKOUT is not None and grid.path.resolve().is_relative_to(CHECKOUT):
        grid_file = grid.path.resolve().relative_to(CHECKOUT).as_posix()
    strip = ("hypotheses", "references")
    info = {
        "name": grid.name, "grid_file": grid_file, "grid": grid.raw, "updated": now(),
        "cells": [{k: v for k, v in records[i].items() if k not in strip} for i in _ordered_ids(grid, records)],
        "comparisons": comps, "alignment": alignment,
    }
    atomic_write_text(json_path, json.dumps(info, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(grid, grid_file, records, comps, alignment))
    return json_path, md_path


def _ordered_ids(grid: Grid, records: dict[str, dict]) -> list[str]:
    order = {d: i for i, d in enumerate(grid.directions)}
    names = {c: i for i, c in enumerate([TEACHER, *grid.cells])}

    def key(i):
        r = records[i]
        return (order.get(r["direction"], 99), r["direction"], names.get(r["cell"], 999), r["cell"], r.get("seed") or 0)

    return sorted(records, key=key)


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _records(grid: Grid, records: dict, direction: str, cell: str, seeds=None) -> list[dict]:
    if cell == TEACHER:
        r = records.get(f"{direction}/{TEACHER}")
        return [r] if r else []
    return [records[f"{direction}/{cell}-s{s}"] for s in (grid.seeds if seeds is None else seeds)
            if f"{direction}/{cell}-s{s}" in records]


def _bleu(recs: list[dict], n_seeds: int) -> str:
    if not recs:
        return DASH
    b = statistics.fmean(r["bleu"] for r in recs)
    hw = statistics.fmean(r["bleu_ci_halfwidth"] for r in recs)
    text = f"{b:.2f} ± {hw:.2f}"
    if n_seeds > 1:
        text += f" ({len(recs)}/{n_seeds} seeds)" if len(recs) < n_seeds else f" (mean of {len(recs)})"
    return text


def _p(grid: Grid, comps: dict, direction: str, base: str | None, cell: str, seeds=None) -> str:
    if base is None:
        return DASH
    if cell == base:
        return "·"
    values = [comps.get((direction, s, base, cell)) for s in (grid.seeds if seeds is None else seeds)]
    values = [f"{v['p_value']:.3f}" for v in values if v is not None]
    return " / ".join(values) if values else DASH


def _num(value, fmt: str = ".2f") -> str:
    return DASH if value is None else format(value, fmt)


def _duration(seconds) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(grid: Grid, grid_file: str, records: dict, comps_list: list[dict], alignment: dict) -> str:
    """The markdown of a grid's results, section by section (the module's docstring lists them)."""
    comps = {(c["direction"], c["seed"], c["baseline"], c["system"]): c for c in comps_list}
    lines = (_overview(grid, grid_file, records) + _table_1(grid, records, comps) + _validation(grid, records)
             + _variants(grid, records, comps) + _validation_curves(grid, records) + _loss_terms(grid, records)
             + _ablations(grid, records, comps) + _alignment(grid, alignment) + _every_cell(grid, records))
    return "\n".join(lines)


def _present(grid: Grid, records: dict, names) -> bool:
    """Whether any of the cells ``names`` has a result in some direction."""
    return any(_records(grid, records, d, n) for d in grid.directions for n in names if n)


def _overview(grid: Grid, grid_file: str, records: dict) -> list[str]:
    """The title, what the grid is, how far it is, where it ran, and how to regenerate this."""
    dirs = grid.directions
    planned = len(dirs) * (1 + sum(len(grid.cell_seeds(c)) for c in grid.cells.values()))
    done = sum(1 for d in dirs for c in [TEACHER, *grid.cells] for _ in _records(grid, records, d, c))
    any_rec = next(iter(records.values()), None)
    # a resumed run's record joins its pieces' hardware with "; " and its commits with ", "
    hw = sorted({h for r in records.values() for h in r["hardware"].split("; ")})
    commits = sorted({c for r in records.values() for c in r["commit"].split(", ")})
    total = sum(r.get("train_seconds") or 0.0 for r in records.values())
    student_overrides = [str(o) for o in grid.raw.get("student_overrides") or []]
    test_desc = "the whole test split" if not grid.test_max_sentences else \
        f"the first {grid.test_max_sentences} sentences of the test split"
    lines = [
        f"# Quality benchmark `{grid.name}`", "",
        f"Grid `{grid_file}`: corpus {grid.corpus} ({test_desc}; Multi30k's is test_2016_flickr), "
        f"vocabulary {grid.vocab_size}, " + (f"first {grid.max_train} training pairs, " if grid.max_train else "")
        + f"seeds {', '.join(map(str, grid.seeds))}. Teacher `{grid.teacher_preset}`"
        + (f" `{' '.join(grid.teacher_overrides)}`" if grid.teacher_overrides else "")
        + f"; students `{grid.raw['student_preset']}`"
        + (f" `{' '.join(student_overrides)}`" if student_overrides else "")
        + " plus each cell's overrides (per-cell table below).", "",
        f"{done} of {planned} cells done; training time {_duration(total)} in all; hardware: {'; '.join(hw) or DASH}; "
        f"commit(s): {', '.join(commits) or DASH}.",
        f"Regenerate: `python benchmarks/quality.py {grid_file} --report-only`.", "",
    ]
    if any_rec:
        lines += [f"sacreBLEU: `{any_rec['signature']}`, beam {grid.beam}.", ""]
    return lines


def _table_1(grid: Grid, records: dict, comps: dict) -> list[str]:
    """Test BLEU of the teacher and the main cells, with the p-values against the No-KD and vanilla-KD students."""
    dirs, nokd, kd = grid.directions, grid.baselines.nokd, grid.baselines.kd
    header = ["model"]
    for d in dirs:
        header += [f"{d} BLEU", "p vs No KD", "p vs KD"]
    rows = []
    teacher_row = ["Teacher"]
    for d in dirs:
        teacher_row += [_bleu(_records(grid, records, d, TEACHER), 1), "", ""]
    rows.append(teacher_row)
    for cell in grid.cells.values():
        if not cell.main:
            continue
        row = [cell.label]
        for d in dirs:
            row += [_bleu(_records(grid, records, d, cell.name), len(grid.cell_seeds(cell))),
                    _p(grid, comps, d, nokd, cell.name),
                    _p(grid, comps, d, kd, cell.name)]
        rows.append(row)
    return ["## Table 1: test BLEU", ""] + _table(header, rows) + [
        "",
        "BLEU ± half-width of the 95% bootstrap confidence interval (sacreBLEU, 1000 resamples). p: paired "
        f"bootstrap resampling (sacreBLEU's paired test, {grid.bootstrap_samples} samples) against the No-KD "
        "(`" + (nokd or DASH) + "`) and the vanilla-KD (`" + (kd or DASH) + "`) student of the same seed, one value "
        "per seed; small p = the difference is unlikely to be resampling noise. `·` = the baseline itself, "
        f"{DASH} = not run yet.", ""]


def _validation(grid: Grid, records: dict) -> list[str]:
    """The best validation BLEU of the main cells (where defaults are chosen), and the best A2D variant."""
    dirs = grid.directions
    header = ["model"] + [f"{d} valid BLEU" for d in dirs]
    rows = []
    for cell in grid.cells.values():
        if not cell.main:
            continue
        row = [cell.label]
        for d in dirs:
            recs = _records(grid, records, d, cell.name)
            row.append(_num(_mean([r.get("valid_best_bleu") for r in recs])))
        rows.append(row)
    lines = ["## Validation BLEU (choose defaults here, not on test)", ""] + _table(header, rows) + [""]
    bests = []
    for d in dirs:
        best = best_a2d(grid, records, d)
        if best:
            bests.append(f"{d}: `{best[0]}` ({best[2]:.2f})")
    return lines + ["Best per-epoch validation BLEU of each run (the checkpoint that is scored on test; validation "
                    "uses the preset's `valid_beam` and `valid_max_sentences`), mean over seeds."
                    + (" Best A2D variant on validation: " + "; ".join(bests) + "." if bests else ""), ""]


def _variants(grid: Grid, records: dict, comps: dict) -> list[str]:
    """Each variant cell against the cell it varies, over the seeds both ran."""
    variants = [c for c in grid.cells.values() if c.compare_to and _present(grid, records, [c.name])]
    if not variants:
        return []
    header = ["variant", "vs"]
    for d in grid.directions:
        header += [f"{d} BLEU", "difference", "p", "valid difference"]
    rows = []
    for cell in variants:
        row = [f"{cell.label} (`{cell.name}`)", f"`{cell.compare_to}`"]
        for d in grid.directions:  # over the seeds both cells ran, so the differences are paired
            seeds = _matched_seeds(grid, records, d, [cell.name, cell.compare_to])
            recs, base_recs = (_records(grid, records, d, n, seeds) for n in (cell.name, cell.compare_to))
            diffs = [comps[(d, s, cell.compare_to, cell.name)]["delta"] for s in seeds
                     if (d, s, cell.compare_to, cell.name) in comps]
            valid = [_mean([r.get("valid_best_bleu") for r in rs]) for rs in (recs, base_recs)]
            row += [_bleu(_records(grid, records, d, cell.name), len(grid.cell_seeds(cell))),
                    _num(_mean(diffs), "+.2f"),
                    _p(grid, comps, d, cell.compare_to, cell.name, seeds),
                    DASH if None in valid else f"{valid[0] - valid[1]:+.2f}"]
        rows.append(row)
    return ["## Variants against the cell they vary", ""] + _table(header, rows) + [
        "", "difference: test BLEU of the variant minus that of the cell it varies (mean over seeds); p: paired "
        "bootstrap of the two (same seed); valid difference: the same on the best validation BLEU. Differences and p "
        "are over the seeds both cells ran; BLEU is the variant's over all its seeds.", ""]


def _validation_curves(grid: Grid, records: dict) -> list[str]:
    """Per direction, the validation BLEU after each epoch of the teacher and the main cells (mean over seeds)."""
    lines = []
    for d in grid.directions:
        curves = []
        for cell in [TEACHER] + [c.name for c in grid.cells.values() if c.main]:
            recs = [r for r in _records(grid, records, d, cell) if r.get("valid_curve")]
            if recs:
                n = min(len(r["valid_curve"]) for r in recs)
                label = "Teacher" if cell == TEACHER else grid.cells[cell].label
                curves.append((label, [_mean([r["valid_curve"][e] for r in recs]) for e in range(n)]))
        if curves:
            n = max(len(c) for _, c in curves)
            rows = [[label] + [_num(c[e]) if e < len(c) else "" for e in range(n)] for label, c in curves]
            lines += [f"## {d}: validation BLEU after each epoch", ""] + _table(
                ["model"] + [f"ep {e + 1}" for e in range(n)], rows) + [""]
    return lines


def _loss_terms(grid: Grid, records: dict) -> list[str]:
    """Per direction, the weighted training terms of the distilled main cells per epoch (mean over seeds)."""
    lines = []
    for d in grid.directions:
        rows, n = [], 0
        for cell in [c for c in grid.cells.values() if c.main and c.needs_teacher]:
            recs = [r for r in _records(grid, records, d, cell.name) if (r.get("loss_terms") or {}).get("ce")]
            if not recs:
                continue
            for key, name in (("ce", "CE"), ("weighted_att", "lambda * L_att"), ("weighted_kd", "mu * KD")):
                if all(key in r["loss_terms"] for r in recs):
                    k = min(len(r["loss_terms"][key]) for r in recs)
                    n = max(n, k)
                    rows.append([f"{cell.label}: {name}"] + [_num(_mean([r["loss_terms"][key][e] for r in recs]))
                                                           for e in range(k)])
        if rows:
            rows = [r + [""] * (n + 1 - len(r)) for r in rows]
            lines += [f"## {d}: training loss terms per epoch", ""] + _table(
                ["term (mean per epoch)"] + [f"ep {e + 1}" for e in range(n)], rows) + [
                "", "Means of the logged training terms over each epoch's logged updates, weights applied "
                "(lambda decays as the cell's schedule says); the loss is their sum.", ""]
    return lines


def _ablations(grid: Grid, records: dict, comps: dict) -> list[str]:
    """Tables 3 (student heads), 4 (head-wise vs layer-wise) and 5 (attention kinds), each once one of its cells ran."""
    lines = []
    if grid.heads_rows and _present(grid, records, [n for row in grid.heads_rows for n in row[1:]]):
        lines += _heads_table(grid, records, comps)
    if grid.granularity_rows and _present(grid, records, [n for _, n in grid.granularity_rows]):
        lines += _ablation_table(grid, records, comps, "## Table 4: head-wise vs layer-wise A2D", "A2D",
                                 grid.granularity_rows)
    if grid.att_kind_rows and _present(grid, records, [n for _, n in grid.att_kind_rows]):
        lines += _ablation_table(grid, records, comps, "## Table 5: attention kinds", "attention kinds",
                                 grid.att_kind_rows)
    return lines


def _heads_table(grid: Grid, records: dict, comps: dict) -> list[str]:
    """Table 3: No-KD and A2D students per number of student heads, with the A2D run's final L_att."""
    dirs = grid.directions
    seeds = {d: _matched_seeds(grid, records, d, [n for row in grid.heads_rows for n in row[1:]]) for d in dirs}
    header = ["student heads"]
    for d in dirs:
        header += [f"{d} No KD" + _seeds_note(grid, seeds[d]), f"{d} A2D", "p", "final L_att"]
    rows = []
    for n, nokd_name, a2d_name in grid.heads_rows:
        row = [str(n)]
        for d in dirs:
            a = _records(grid, records, d, a2d_name, seeds[d])
            row += [_bleu(_records(grid, records, d, nokd_name, seeds[d]), len(seeds[d])) if nokd_name else DASH,
                    _bleu(a, len(seeds[d])), _p(grid, comps, d, nokd_name, a2d_name, seeds[d]),
                    _num(_mean([r.get("final_att") for r in a]), ".3f")]
        rows.append(row)
    return ["## Table 3: student attention heads", ""] + _table(header, rows) + [
        "", "Test BLEU ± CI half-width; p: paired bootstrap of the A2D student against the No-KD student with "
        "the same heads; final L_att: the last logged attention loss of the A2D run (mean over seeds). "
        + ABLATION_SEEDS, ""]


def _alignment(grid: Grid, alignment: dict) -> list[str]:
    """The AAM figure and summary of the A2D student that is best on validation, per direction."""
    if not alignment:
        return []
    lines = ["## Alignment of the best A2D student (chosen on validation)", ""]
    for d in grid.directions:
        a = alignment.get(d)
        if not a:
            continue
        lines += [f"{d}: `{a['cell']}` seed {a['seed']} (valid BLEU {a['valid_bleu']:.2f})", "",
                  f"![AAM weights {d}]({a['png']})", "", "```", a.get("summary_text", ""), "```", ""]
    return lines


def _every_cell(grid: Grid, records: dict) -> list[str]:
    """One row per cell x seed: scores, training time, hardware, commit, finish time."""
    header = ["direction", "cell", "seed", "method", "test BLEU", "95% CI", "chrF", "95% CI", "valid BLEU",
              "final L_att", "updates", "train time", "hardware", "commit", "finished"]
    rows = []
    for i in _ordered_ids(grid, records):
        r = records[i]
        rows.append([r["direction"], r["cell"], str(r.get("seed")), r.get("method") or TEACHER, f"{r['bleu']:.2f}",
                     f"{r['bleu_ci'][0]:.2f}-{r['bleu_ci'][1]:.2f}", f"{r['chrf']:.2f}",
                     f"{r['chrf_ci'][0]:.2f}-{r['chrf_ci'][1]:.2f}" if r.get("chrf_ci") else DASH,
                     _num(r.get("valid_best_bleu")), _num(r.get("final_att"), ".3f"), str(r.get("updates") or DASH),
                     _duration(r.get("train_seconds")) + (" (resumed)" if len(r.get("pieces") or []) > 1 else ""),
                     r["hardware"], r["commit"], r["finished"]])
    return ["## Every cell", ""] + _table(header, rows) + [
        "", "train time: wall time of training, summed over the pieces of a resumed run (each up to its last "
        "epoch end); the seq-kd cells' teacher translations are timed separately in the JSON.", ""]


def _ablation_table(grid: Grid, records: dict, comps: dict, title: str, first: str, rows_spec) -> list[str]:
    nokd = grid.baselines.nokd
    base = grid.ablation_base
    seeds = {d: _matched_seeds(grid, records, d, [name for _, name in rows_spec]) for d in grid.directions}
    header = [first]
    for d in grid.directions:
        header += [f"{d} BLEU" + _seeds_note(grid, seeds[d]), f"p vs `{base}`", "p vs No KD", "valid BLEU",
                   "final L_att"]
    rows = []
    for label, name in rows_spec:
        row = [f"{label} (`{name}`)"]
        for d in grid.directions:
            recs = _records(grid, records, d, name, seeds[d])
            row += [_bleu(recs, len(seeds[d])), _p(grid, comps, d, base, name, seeds[d]),
                    _p(grid, comps, d, nokd, name, seeds[d]), _num(_mean([r.get("valid_best_bleu") for r in recs])),
                    _num(_mean([r.get("final_att") for r in recs]), ".3f")]
        rows.append(row)
    return [title, ""] + _table(header, rows) + ["", ABLATION_SEEDS, ""]


ABLATION_SEEDS = ("Every row of an ablation table is taken over the same seeds: those for which each of its rows that "
                  "has run in that direction has a result (named in the header when not all of the grid's).")


def _matched_seeds(grid: Grid, records: dict, direction: str, names) -> list[int]:
    """The grid's seeds for which every one of ``names`` that has run at all in ``direction`` has a result, so a
    table compares its rows over the same seeds (an ablation often runs on fewer seeds than its base)."""
    ran = [n for n in dict.fromkeys(names) if n and _records(grid, records, direction, n)]
    return [s for s in grid.seeds if all(f"{direction}/{n}-s{s}" in records for n in ran)]


def _seeds_note(grid: Grid, seeds: list[int]) -> str:
    if not seeds or seeds == list(grid.seeds):
        return ""
    return f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"


__all__ = ["write_report", "render_markdown"]
