"""Recipe: the demo a new user runs first. Multi30k De->En on a laptop CPU, about ten minutes on two cores.

The teacher is a trained one: the ``tiny-r3`` De->En teacher (4+4 layers, 40.00 test BLEU), which the
package carries (and a checkout keeps in ``benchmarks/results/quality-tiny-r3-teachers/de-en``). Then:

    prepare (with the teacher's SentencePiece model) -> a No-KD and an A2D student under the same short
    budget of updates, side by side on two cores -> all three scored on test_2016 (sacreBLEU, 95% CI) ->
    the paired bootstrap test of A2D against No KD -> one table, the training curves, the alignment figure

all under ``OUT``. A short budget is where distillation helps most: on the ``tiny-r3`` grid A2D led
No KD by 1.0 to 7.0 validation BLEU in epochs 1-4. A stage whose result is already there is skipped, so
an interrupted demo continues where it stopped. ``train_teacher=True`` trains a teacher first instead
(much slower, and a young teacher has little to teach).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from a2d.config import load_config
from a2d.evaluate import evaluate_model, paired_bootstrap
from a2d.recipes.train import train
from a2d.rundir import RunDir
from a2d.utils import UserError, atomic_write_text, sha256_file

#: The demo's teacher inside the package (a link to the stored tiny-r3 teacher in a checkout; a copy in a wheel).
PACKAGED_TEACHER = Path(__file__).resolve().parents[1] / "assets" / "demo-teacher"
#: Where a copy of the teacher folder can be downloaded from when the installation lacks it (files checked below).
TEACHER_URL_VARIABLE = "A2D_DEMO_TEACHER_URL"
TEACHER_FILES = {  # sha256 of the stored tiny-r3 De->En teacher (benchmarks/results/quality-tiny-r3-teachers/de-en)
    "config.json": "c0b6115a3090b2fd3bc9bc533fc40957ea223c924acbd10ed3e0c1bbe278e111",
    "config.yaml": "8f3a5872dcf6a5f74b73bd176d46283688cf5357dcb7680b4dda7805d2b7c08e",
    "generation_config.json": "10cfaf3b541a11fd8274a43007c700f54e70b3d41efdf02350cd4725837476bf",
    "model.safetensors": "fa546f1038ab24a9b9e5f6903c766239b46ede41a4ae0676246ee0eb6057f763",
    "sentencepiece.model": "e80d6ddc234dfbce78af482bcfe01dfb1c142ed9f0a1dff3dd71071e813eecb5",
}
#: The students' budget: updates of the tiny-student preset (max_tokens 2048; about 1.2 epochs of Multi30k).
DEFAULT_STEPS = 300
STUDENT_OVERRIDES = ["warmup_updates=100", "max_epochs=100", "patience=0", "valid_max_sentences=300"]


def demo_teacher(log=print) -> Path:
    """The stored teacher's folder: the packaged copy, else a download into the user cache, checked by SHA-256."""
    if all((PACKAGED_TEACHER / name).is_file() for name in TEACHER_FILES):
        return PACKAGED_TEACHER
    from a2d.data.corpus import cache_dir

    folder = cache_dir("demo-teacher")
    if all((folder / n).is_file() and sha256_file(folder / n) == h for n, h in TEACHER_FILES.items()):
        return folder
    base = os.environ.get(TEACHER_URL_VARIABLE)
    if not base:
        raise UserError(f"the demo's teacher is not in this installation; set {TEACHER_URL_VARIABLE} to an address "
                        "that serves its folder, or run `a2d demo --train-teacher`")
    import urllib.error
    import urllib.request

    folder.mkdir(parents=True, exist_ok=True)
    for name, digest in TEACHER_FILES.items():
        url = f"{base.rstrip('/')}/{name}"
        log(f"downloading {url}")
        tmp = folder / f".{name}.tmp"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                tmp.write_bytes(response.read())
        except (urllib.error.URLError, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from None
        if sha256_file(tmp) != digest:
            tmp.unlink()
            raise UserError(f"{url}: not the demo's teacher (SHA-256 differs)")
        tmp.replace(folder / name)
    return folder


def _student_command(name: str, method: str, data: Path, teacher: Path, run: Path, steps: int, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "a2d.cli"]
    if method == "none":
        cmd += ["train"]
    else:
        cmd += ["distill", "--teacher", str(teacher), "--method", method]
    cmd += ["--data", str(data), "--preset", "tiny-student", "--out", str(run), "--max-steps", str(steps),
            "--seed", str(seed), *STUDENT_OVERRIDES]
    if RunDir(run).status() in ("started", "broken"):
        cmd.append("--resume")
    return cmd


def _side_by_side(jobs: list[tuple[str, list[str]]], out: Path, parallel: bool, log) -> dict[str, float]:
    """Run ``a2d`` commands, side by side (one thread each) or one after the other; their logs to files."""
    timings = {}
    threads = "1" if parallel else str(max(1, os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    running = []
    for name, cmd in jobs:
        log_file = open(out / f"{name}.log", "w", encoding="utf-8")
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        running.append((name, proc, log_file, start))
        if not parallel:
            proc.wait()
            timings[name] = time.perf_counter() - start
    for name, proc, log_file, start in running:
        proc.wait()
        timings.setdefault(name, time.perf_counter() - start)
        log_file.close()
        if proc.returncode != 0:
            tail = (out / f"{name}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
            raise UserError(f"{name} failed ({tail[0] if tail else 'no output'}); see {out / (name + '.log')}")
        log(f"   {name}: {timings[name] / 60:.1f} min")
    return timings


def _evaluate_all(models: dict[str, Path], data: Path, out: Path, parallel: bool, log) -> None:
    """``a2d evaluate`` (beam 5, test split) of each model into ``out/test-NAME.json``; side by side when
    ``parallel`` (one thread each: small models decode about as fast on one thread as on two)."""
    todo = {name: model for name, model in models.items() if not (out / f"test-{name}.json").is_file()}
    if not todo:
        return
    log("== score on test_2016 (beam 5): " + ", ".join(todo) + (" side by side" if parallel else ""))
    if not parallel:
        for name, model in todo.items():
            evaluate_model(model, data, split="test", beam=5, out=out / f"test-{name}.json", progress=False)
        return
    jobs = [(f"evaluate-{name}", [sys.executable, "-m", "a2d.cli", "evaluate", "--model", str(model), "--data",
                                  str(data), "--split", "test", "--beam", "5", "--out", str(out / f"test-{name}.json")])
            for name, model in todo.items()]
    _side_by_side(jobs, out, parallel=True, log=lambda *a: None)


def demo(out: Path, steps: int = DEFAULT_STEPS, seed: int = 1, train_teacher: bool = False,
         max_train: int | None = None, parallel: bool | None = None, log=print) -> dict:
    from a2d.analysis import format_summary, plot_alignment
    from a2d.curves import plot_training_curves
    from a2d.data.corpus import locate_corpus
    from a2d.data.prepare import prepare, summary_lines
    from a2d.models import count_parameters, load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if parallel is None:  # two students (and three decoders) side by side when there are cores for it
        parallel = (os.cpu_count() or 1) >= 2
    t0 = time.perf_counter()
    timings = {}

    # ---- the teacher and the data, encoded with the teacher's vocabulary
    if train_teacher:
        teacher = out / "teacher"
    else:
        teacher = demo_teacher(log)
        log(f"== teacher: the stored tiny-r3 De->En teacher ({teacher})")
    if not (data / "meta.json").exists():
        log("== prepare Multi30k De->En" + ("" if train_teacher else " with the teacher's SentencePiece model"))
        meta = prepare(data, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=8000, max_train=max_train,
                       vocab=None if train_teacher else teacher / "sentencepiece.model", log=lambda *a: None)
        log("\n".join(summary_lines(meta)))
    if train_teacher and RunDir(teacher).status() != "finished":
        log("== teacher: tiny-teacher, 5 epochs")
        t = time.perf_counter()
        train(load_config("tiny-teacher", ["max_epochs=5", "patience=5", f"seed={seed}"]), data, teacher,
              resume=RunDir(teacher).status() in ("started", "broken"))
        timings["teacher"] = time.perf_counter() - t

    # ---- two students under the same budget, side by side
    students = [("student-nokd", "none"), ("student-a2d", "a2d")]
    jobs = [(name, _student_command(name, method, data, teacher, out / name, steps, seed))
            for name, method in students if RunDir(out / name).status() != "finished"]
    if jobs:
        log(f"== students: tiny-student, {steps} updates each, seed {seed}: "
            + ", ".join(name for name, _ in jobs) + (" side by side" if parallel and len(jobs) > 1 else ""))
        timings.update(_side_by_side(jobs, out, parallel and len(jobs) > 1, log))
    else:
        log("== students: already trained, skipping")

    # ---- score the three on test_2016, and A2D against No KD
    rows, hyps = [], {}
    models = {name: teacher if name == "teacher" else out / name for name, _ in [("teacher", None)] + students}
    _evaluate_all(models, data, out, parallel, log)
    for name, method in [("teacher", None)] + students:
        model = models[name]
        result = json.loads((out / f"test-{name}.json").read_text(encoding="utf-8"))
        hyps[name] = (out / f"test-{name}.hyp").read_text(encoding="utf-8").split("\n")[:-1]
        params = count_parameters(load_model(model)[0])
        rows.append({**result, "name": name, "method": method or "(teacher)", "parameters": params,
                     "train_seconds": timings.get(name)})
    references = [line for line in (data / "test.en").read_text(encoding="utf-8").split("\n")[:-1]]
    test = paired_bootstrap(hyps["student-nokd"], {"student-a2d": hyps["student-a2d"]}, references,
                            tgt_lang="en")["student-a2d"]
    total = time.perf_counter() - t0

    speed = "sent/s (beam 5" + (", 3 decoding side by side)" if parallel else ")")
    lines = [f"| model | method | parameters | test BLEU | 95% CI | chrF | {speed} | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = r["train_seconds"]
        lines.append(f"| {r['name']} | {r['method']} | {r['parameters'] / 1e6:.1f} M | {r['bleu']:.2f} | "
                     f"{r['bleu_ci'][0]:.2f}-{r['bleu_ci'][1]:.2f} | {r['chrf']:.2f} | {r['sentences_per_second']:.0f} "
                     f"| {f'{secs / 60:.1f} min' if secs else ('stored' if r['name'] == 'teacher' else 'earlier run')} |")
    verdict = "ahead of" if test["delta"] > 0 else "not ahead of"
    lines += ["", f"A2D student vs No-KD student: {test['delta']:+.2f} BLEU, paired bootstrap p = {test['p_value']:.3f} "
              f"(A2D is {verdict} No KD{', significantly' if test['p_value'] < 0.05 and test['delta'] > 0 else ''}).",
              f"Students: tiny-student, {steps} updates, seed {seed}. Wall time {total / 60:.1f} min.",
              rows[0]["signature"]]
    table = "\n".join(lines)
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"rows": rows, "a2d_vs_nokd": test, "steps": steps, "seed": seed, "wall_seconds": round(total, 1)},
        indent=2) + "\n")
    log(table)
    plot_training_curves([out / name for name, _ in students], out / "curves.png")
    summary = plot_alignment(out / "student-a2d", out / "alignment.png")
    log(format_summary(summary))
    log(f"wrote {out / 'results.md'}, {out / 'curves.png'}, {out / 'alignment.png'}")
    return {"rows": rows, "a2d_vs_nokd": test, "wall_seconds": total}


__all__ = ["demo", "demo_teacher"]
