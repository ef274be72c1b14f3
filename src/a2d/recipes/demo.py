"""Recipe: the demo a new user runs first. Multi30k De->En on a laptop CPU, within ten minutes on two cores.

The teacher is a trained one: the ``tiny-r3`` De->En teacher (4+4 layers, 40.00 test BLEU), which the
package carries (and a checkout keeps in ``benchmarks/results/quality-tiny-r3-teachers/de-en``). Then:

    prepare (with the teacher's SentencePiece model) -> three students under the same short budget of
    updates: No KD, word-level KD and A2D -> each scored on test_2016 at the update that ends the budget
    (``RUN/last``; sacreBLEU, 95% CI), and the teacher -> A2D's paired bootstrap test against No KD and
    against KD -> one table, the training curves, the alignment figure (A2D's AAM at that update)

all under ``OUT``. A2D's loss includes word-level KD, so the KD student shows how much of A2D's gain over
No KD is KD's; the output says so plainly when A2D is not ahead of KD. The jobs share the cores one
thread each, the longest training first, and each model is scored as soon as it is trained
(docs/results.md, "The demo's schedule"). A short budget is where distillation helps most: on the
``tiny-r3`` grid A2D led No KD by 1.0 to 7.0 validation BLEU in epochs 1-4. A stage whose result is
already there is skipped, so an interrupted demo continues where it stopped. ``train_teacher=True``
trains a teacher first instead (much slower, and a young teacher has little to teach).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from a2d.analysis import format_summary, plot_alignment
from a2d.curves import plot_training_curves
from a2d.data.corpus import cache_dir, locate_corpus
from a2d.data.prepare import prepare, summary_lines
from a2d.defaults import DEMO_STEPS
from a2d.errors import BadValue, CannotCreate, OutputExists
from a2d.evaluate import paired_bootstrap
from a2d.models import count_parameters, load_model
from a2d.recipes.train import train
from a2d.rundir import CONFIG_FILE, RunDir
from a2d.settings import load_config
from a2d.utils import UserError, atomic_write_text, sha256_file

#: The demo's teacher inside the package (a link to the stored tiny-r3 teacher in a checkout; a copy in a wheel).
PACKAGED_TEACHER = Path(__file__).resolve().parents[1] / "assets" / "demo-teacher"
#: Where a copy of the teacher folder can be downloaded from when the installation lacks it (files checked below).
TEACHER_URL_VARIABLE = "A2D_DEMO_TEACHER_URL"
TEACHER_FILES = {  # sha256 of the stored tiny-r3 De->En teacher (benchmarks/results/quality-tiny-r3-teachers/de-en):
    # the model, a2d's decoding (generation_config.json), and its tokenizer both as a2d reads it
    # (sentencepiece.model) and as AutoTokenizer does (the Marian files), so the folder also works without a2d
    "config.json": "c0b6115a3090b2fd3bc9bc533fc40957ea223c924acbd10ed3e0c1bbe278e111",
    CONFIG_FILE: "8f3a5872dcf6a5f74b73bd176d46283688cf5357dcb7680b4dda7805d2b7c08e",
    "generation_config.json": "178e7b9019b4deda11c25e5d50e6d1dfa525f8c6429c9f62c5f380d154b9287e",
    "model.safetensors": "fa546f1038ab24a9b9e5f6903c766239b46ede41a4ae0676246ee0eb6057f763",
    "sentencepiece.model": "e80d6ddc234dfbce78af482bcfe01dfb1c142ed9f0a1dff3dd71071e813eecb5",
    "source.spm": "e80d6ddc234dfbce78af482bcfe01dfb1c142ed9f0a1dff3dd71071e813eecb5",
    "target.spm": "e80d6ddc234dfbce78af482bcfe01dfb1c142ed9f0a1dff3dd71071e813eecb5",
    "vocab.json": "92bee01a0740daa0bb8a3ae1f3f92f84761e9845b3643e252100c2d51c28e2f0",
    "tokenizer_config.json": "1f35ac8c5d6054f619bfeee2e86a4223b62ee1134fe87587901fbdd54ba0c2d2",
    "special_tokens_map.json": "9e176c25dc83a6684d616a84a05e6a32c2c5f526c876924ff1f526579f86094e",
}
STUDENT_OVERRIDES = ["warmup_updates=100", "max_epochs=100", "patience=0", "valid_max_sentences=300"]
#: The students (name, method), in the table's order.
STUDENTS = [("student-nokd", "none"), ("student-kd", "kd"), ("student-a2d", "a2d")]
#: The order they start in, the longest to train first (where fewer run at once than there are students).
TRAINING_ORDER = ["student-a2d", "student-kd", "student-nokd"]
#: The order the scores are computed in, once each model is ready (the teacher's needs no training).
EVALUATION_ORDER = ["teacher", "student-nokd", "student-kd", "student-a2d"]
#: A2D's AAM learning rate in the demo (docs/results.md, "The AAM's learning rate in the demo").
DEMO_AAM_LR = 0.1
METHOD_OVERRIDES = {"a2d": [f"aam_lr={DEMO_AAM_LR}"]}


def _teacher_address(base: str) -> str:
    """``A2D_DEMO_TEACHER_URL`` as a URL: an http(s) or file address as given, a plain path as a file URL."""
    from urllib.parse import urlparse

    try:
        scheme = urlparse(base).scheme.lower()
    except ValueError as e:  # e.g. an unclosed [ of an IPv6 host
        raise UserError(f"{TEACHER_URL_VARIABLE}={base}: not an address ({e})") from None
    if scheme in ("http", "https", "file"):
        return base
    if scheme and len(scheme) > 1:  # (a one-letter "scheme" is a Windows drive)
        raise UserError(f"{TEACHER_URL_VARIABLE}={base}: use an http(s):// or file:// address, or a folder's path")
    folder = Path(base).expanduser()
    if not folder.is_dir():
        raise UserError(f"{TEACHER_URL_VARIABLE}={base}: no such folder")
    return folder.resolve().as_uri()


def demo_teacher(log=print) -> Path:
    """The stored teacher's folder: the packaged copy, else a download into the user cache, checked by SHA-256.

    ``A2D_DEMO_TEACHER_URL`` names where to download it from: an ``http(s)://`` or ``file://`` address, or
    the path of a folder that holds its files.
    """
    if all((PACKAGED_TEACHER / name).is_file() for name in TEACHER_FILES):
        return PACKAGED_TEACHER
    folder = cache_dir("demo-teacher")
    if all((folder / n).is_file() and sha256_file(folder / n) == h for n, h in TEACHER_FILES.items()):
        return folder
    base = os.environ.get(TEACHER_URL_VARIABLE)
    if not base:
        raise UserError(f"the demo's teacher is not in this installation; set {TEACHER_URL_VARIABLE} to an address "
                        "that serves its folder (or that folder's path), or run `a2d demo --train-teacher`")
    base = _teacher_address(base)
    import urllib.error
    import urllib.request

    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the folders this call creates
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{folder}: cannot create the teacher's folder ({e.strerror})") from None
    try:
        for name, digest in TEACHER_FILES.items():
            url = f"{base.rstrip('/')}/{name}"
            log(f"downloading {url}")
            tmp = folder / f".{name}.tmp"
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    tmp.write_bytes(response.read())
            except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a malformed address
                tmp.unlink(missing_ok=True)
                raise UserError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from None
            if sha256_file(tmp) != digest:
                tmp.unlink()
                raise UserError(f"{url}: not the demo's teacher (SHA-256 differs)")
            tmp.replace(folder / name)
    except BaseException:
        for path in made:  # innermost first: an empty folder made here is not left behind
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise
    return folder


@dataclass
class _Job:
    """One ``a2d`` command of the demo; it starts once the job named ``after`` (if any) has finished."""

    name: str
    cmd: list[str]
    after: str | None = None


def _student_command(method: str, data: Path, teacher: Path, run: Path, steps: int, seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "a2d.cli"]
    if method == "none":
        cmd += ["train"]
    else:
        cmd += ["distill", "--teacher", str(teacher), "--method", method]
    cmd += ["--data", str(data), "--preset", "tiny-student", "--out", str(run), "--max-steps", str(steps),
            "--seed", str(seed), *STUDENT_OVERRIDES, *METHOD_OVERRIDES.get(method, [])]
    if RunDir(run).status() in ("started", "broken"):
        cmd.append("--resume")
    return cmd


def _evaluate_command(model: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "a2d.cli", "evaluate", "--model", str(model), "--data", str(data), "--split", "test",
            "--beam", "5", "--out", str(out)]


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its finished children."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def lanes(parallel: bool) -> tuple[int, int]:
    """``(jobs at a time, threads per job)``: side by side, the three students at once with one thread each
    (``cores // 3`` threads on more than three cores), else one job at a time on every core.

    Measured in CPU seconds (docs/results.md, "The demo's schedule"): one-thread jobs waste nothing on
    threads waiting for each other, and three at a time on two cores keep both busy until the end (about 406 s
    of work for 398 s of the cores), where two at a time leave one idle while the last student trains (435 s).
    """
    n = cores()
    if not parallel or n == 1:
        return 1, n
    return len(STUDENTS), max(1, n // len(STUDENTS))


def _run_jobs(jobs: list[_Job], out: Path, slots: int, threads: int, log) -> dict[str, dict]:
    """Run the jobs, ``slots`` at a time with ``threads`` threads each, each as soon as a slot is free and the job
    it needs has finished, in the order given; each one's output goes to ``OUT/NAME.log``.

    Returns ``{name: {"wall_seconds", "cpu_seconds"}}``. A failed job stops the others (their runs resume
    next time) and is a one-line error naming its log.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    names = {job.name for job in jobs}
    pending, running, done = list(jobs), {}, {}
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= slots:
                    break
                if job.after in names and job.after not in done:
                    continue
                pending.remove(job)
                log_file = open(out / f"{job.name}.log", "w", encoding="utf-8")
                proc = subprocess.Popen(job.cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                running[proc.pid] = (job, proc, log_file, time.perf_counter())
            if not running:
                raise RuntimeError(f"demo jobs wait for jobs that never run: {[job.name for job in pending]}")
            pid, status, usage = os.wait4(-1, 0)
            if pid not in running:
                continue
            job, proc, log_file, start = running.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            log_file.close()
            done[job.name] = {"wall_seconds": round(time.perf_counter() - start, 1),
                              "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1)}
            if proc.returncode != 0:
                text = (out / f"{job.name}.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
                raise UserError(f"{job.name} failed ({text[-1] if text else 'no output'}); see "
                                f"{out / (job.name + '.log')} (run the demo again to continue)")
            log(f"   {job.name}: {done[job.name]['wall_seconds'] / 60:.1f} min")
    finally:
        for job, proc, log_file, _ in running.values():  # stopped by a failure or an interrupt
            proc.terminate()
            proc.wait()
            log_file.close()
    return done


def scored_models(out: Path, teacher: Path) -> dict[str, Path]:
    """The model folder scored for each row: the teacher, and each student's ``RUN/last``, the checkpoint of the
    update that spends the budget (validated there; ``best/`` may hold an earlier epoch's end)."""
    return {"teacher": teacher, **{name: RunDir(out / name).last for name, _ in STUDENTS}}


def plan_jobs(out: Path, data: Path, teacher: Path, steps: int, seed: int) -> list[_Job]:
    """What is left to do, in the order it takes the cores: the students not yet finished (longest first,
    ``TRAINING_ORDER``), then the scores not yet written, each after the training it needs."""
    methods, models = dict(STUDENTS), scored_models(out, teacher)
    jobs = [_Job(name, _student_command(methods[name], data, teacher, out / name, steps, seed))
            for name in TRAINING_ORDER if RunDir(out / name).status() != "finished"]
    jobs += [_Job(f"evaluate-{name}", _evaluate_command(models[name], data, out / f"test-{name}.json"), after=name)
             for name in EVALUATION_ORDER if not (out / f"test-{name}.json").is_file()]
    return jobs


def comparison_lines(tests: dict[str, dict]) -> list[str]:
    """The paired tests of A2D against No KD and against KD in words, and a plain sentence when A2D is not ahead
    of KD (the attention transfer then adds nothing over word-level KD, which A2D includes)."""
    lines = [_paired_line(tests["a2d_vs_nokd"], "No-KD"), _paired_line(tests["a2d_vs_kd"], "KD")]
    if tests["a2d_vs_kd"]["delta"] <= 0:
        lines.append("A2D is not ahead of plain word-level KD in this run: at this budget its attention transfer "
                     "adds nothing measurable to the KD term it includes.")
    return lines


def _paired_line(test: dict, name: str) -> str:
    significant = test["p_value"] < 0.05
    if round(test["delta"], 2) == 0:  # what the line shows: no difference to speak of, whatever the p-value
        verdict = f"no difference from {name} at this precision"
    elif test["delta"] > 0:
        verdict = f"A2D is ahead of {name}" + (", significantly" if significant else ", but not significantly")
    else:
        verdict = f"A2D is not ahead of {name}" + (f"; {name} is significantly ahead" if significant else "")
    return (f"A2D student vs {name} student: {test['delta']:+.2f} BLEU, paired bootstrap p = {test['p_value']:.3f} "
            f"({verdict}).")


def _alignment_figure(out: Path, log) -> list[Path]:
    """Figure 2 for the A2D student at the budget's update (the AAM saved with its last/), and its numbers."""
    summary = plot_alignment(RunDir(out / "student-a2d").last, out / "alignment.png")
    log(format_summary(summary))
    return [out / "alignment.png"]


def demo(out: Path, steps: int = DEMO_STEPS, seed: int = 1, train_teacher: bool = False,
         max_train: int | None = None, parallel: bool | None = None, log=print) -> dict:
    """Run the demo into ``out`` (see the module's docstring); returns the table's rows and the paired tests."""
    out = Path(out)
    if steps < 1:
        raise BadValue("steps", steps, "must be at least 1")
    if out.exists() and not out.is_dir():
        raise OutputExists(out, "exists and is not a folder")
    teacher = out / "teacher" if train_teacher else demo_teacher(log)  # fetched before --out is made
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        return _demo(out, teacher, steps, seed, train_teacher, max_train, parallel, log)
    except BaseException:
        for path in made:  # a demo that stopped before writing anything leaves no empty --out behind
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise


def _demo(out: Path, teacher: Path, steps: int, seed: int, train_teacher: bool, max_train: int | None,
          parallel: bool | None, log) -> dict:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CannotCreate(out, e.strerror) from None
    data = out / "data"
    if parallel is None:  # the students (and the decoders) side by side when there are cores for it
        parallel = cores() >= 2
    slots, threads = lanes(parallel)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    timings = {}

    # ---- the teacher and the data, encoded with the teacher's vocabulary
    if not train_teacher:
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
        timings["teacher"] = {"wall_seconds": round(time.perf_counter() - t, 1)}

    # ---- three students under the same budget, then each scored on test_2016 (beam 5) as soon as it is trained
    models = scored_models(out, teacher)
    jobs = plan_jobs(out, data, teacher, steps, seed)
    if jobs:
        trained = [job.name for job in jobs if not job.name.startswith("evaluate-")]
        log(f"== students: tiny-student, {steps} updates each, seed {seed}: "
            + (", ".join(trained) if trained else "already trained")
            + f"; then scored on test_2016 (beam 5); {slots} at a time, {threads} thread(s) each")
        timings.update(_run_jobs(jobs, out, slots, threads, log))
    else:
        log("== students: already trained and scored, skipping")

    # ---- the table, and A2D against No KD and against KD
    rows, hyps = [], {}
    for name, method in [("teacher", None)] + STUDENTS:
        result = json.loads((out / f"test-{name}.json").read_text(encoding="utf-8"))
        hyps[name] = (out / f"test-{name}.hyp").read_text(encoding="utf-8").split("\n")[:-1]
        params = count_parameters(load_model(models[name])[0])
        rows.append({**result, "name": name, "method": method or "(teacher)", "parameters": params,
                     "train_seconds": timings.get(name, {}).get("wall_seconds")})
    references = (data / "test.en").read_text(encoding="utf-8").split("\n")[:-1]
    tests = {f"a2d_vs_{key}": paired_bootstrap(hyps[baseline], {"student-a2d": hyps["student-a2d"]}, references,
                                               tgt_lang="en")["student-a2d"]
             for key, baseline in (("nokd", "student-nokd"), ("kd", "student-kd"))}
    total, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0

    speed = f"sent/s (beam 5, {threads} thread{'s' if threads > 1 else ''})"
    lines = [f"| model | method | parameters | test BLEU | 95% CI | chrF | {speed} | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = r["train_seconds"]
        lines.append(f"| {r['name']} | {r['method']} | {r['parameters'] / 1e6:.1f} M | {r['bleu']:.2f} | "
                     f"{r['bleu_ci'][0]:.2f}-{r['bleu_ci'][1]:.2f} | {r['chrf']:.2f} | {r['sentences_per_second']:.0f} "
                     f"| {f'{secs / 60:.1f} min' if secs else ('stored' if r['name'] == 'teacher' else 'earlier run')} |")
    lines += ["", *comparison_lines(tests)]
    lines += [f"Students: tiny-student, scored at update {steps} (their last checkpoint), seed {seed}. "
              f"Wall time {total / 60:.1f} min, CPU time {cpu / 60:.1f} min ({slots} job(s) at a time on {cores()} "
              f"core(s)).",
              rows[0]["signature"]]
    table = "\n".join(lines)
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"rows": rows, **tests, "steps": steps, "seed": seed, "wall_seconds": round(total, 1), "jobs": timings,
         "cpu_seconds": round(cpu, 1), "side_by_side": slots, "threads_per_job": threads}, indent=2) + "\n")
    log(table)
    plot_training_curves([out / name for name, _ in STUDENTS], out / "curves.png")
    written = [out / "results.md", out / "curves.png"]
    written += _alignment_figure(out, log)
    log("wrote " + ", ".join(map(str, written)))
    return {"rows": rows, **tests, "wall_seconds": total}


__all__ = ["demo", "demo_teacher"]
