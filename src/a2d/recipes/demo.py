"""Recipe: the demo a new user runs first. Multi30k De->En on a laptop CPU, about ten minutes on two cores.

prepare -> tiny teacher -> No-KD student -> A2D student -> sacreBLEU on test_2016 -> a table,
training curves and the alignment figure, all under ``OUT``. A stage whose result is already
there is skipped, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import time
from pathlib import Path

from a2d.config import load_config
from a2d.evaluate import evaluate_model
from a2d.recipes.distill import distill
from a2d.recipes.train import train
from a2d.rundir import RunDir
from a2d.utils import atomic_write_text


def demo(out: Path, max_train: int | None = 10000, teacher_epochs: int | None = None,
         student_epochs: int | None = None, log=print) -> list[dict]:
    from a2d.analysis import format_summary, plot_alignment
    from a2d.curves import plot_training_curves
    from a2d.data.corpus import locate_corpus
    from a2d.data.prepare import prepare, summary_lines

    out = Path(out)
    data = out / "data"
    timings = {}
    t0 = time.perf_counter()
    if not (data / "meta.json").exists():
        log("== prepare Multi30k De->En")
        meta = prepare(data, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=8000, max_train=max_train)
        log("\n".join(summary_lines(meta)))
    timings["prepare"] = time.perf_counter() - t0

    teacher_epochs = teacher_epochs or 5
    student_epochs = student_epochs or 4
    runs = [
        ("teacher", "tiny-teacher", None, teacher_epochs),
        ("student-nokd", "tiny-student", "none", student_epochs),
        ("student-a2d", "tiny-student", "a2d", student_epochs),
    ]
    for name, preset, method, epochs in runs:
        run = out / name
        status = RunDir(run).status()
        if status == "finished":
            log(f"== {name}: already trained, skipping")
            continue
        resume = status in ("started", "broken")  # broken: stopped before its first checkpoint
        log(f"== {name}: {preset}" + (f", method {method}" if method else "") + f", {epochs} epochs")
        overrides = [f"max_epochs={epochs}", f"patience={epochs}"]
        t = time.perf_counter()
        if method is None:
            train(load_config(preset, overrides), data, run, resume=resume)
        else:
            distill(load_config(preset, overrides + [f"method={method}"]), data, run, out / "teacher", resume=resume)
        timings[name] = time.perf_counter() - t

    rows = []
    for name, preset, method, _ in runs:
        result = evaluate_model(out / name, data, split="test", beam=5, out=out / name / "test.json", progress=False)
        rows.append({**result, "model": name, "preset": preset, "method": method or "(teacher)"})
    lines = ["| model | method | test BLEU | 95% CI | chrF | train time |", "|---|---|---|---|---|---|"]
    for r in rows:
        secs = timings.get(r["model"])
        lines.append(f"| {r['model']} | {r['method']} | {r['bleu']:.2f} | {r['bleu_ci'][0]:.2f}-{r['bleu_ci'][1]:.2f} "
                     f"| {r['chrf']:.2f} | {f'{secs / 60:.1f} min' if secs else 'earlier run'} |")
    lines.append(f"\n{rows[0]['signature']}")
    table = "\n".join(lines)
    atomic_write_text(out / "results.md", table + "\n")
    log(table)
    plot_training_curves([out / name for name, *_ in runs], out / "curves.png")
    summary = plot_alignment(out / "student-a2d", out / "alignment.png")
    log(format_summary(summary))
    log(f"wrote {out / 'results.md'}, {out / 'curves.png'}, {out / 'alignment.png'}")
    return rows
