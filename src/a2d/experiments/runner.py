"""Running a grid: prepare the data, train and score the teacher and every cell, keep what the grid stores.

For every direction of the grid: prepare the data once (``RUNS/data-<src>-<tgt>``, the corpus comes from
``$A2D_DATA_DIR`` or the download cache as everywhere else), train one teacher
(``RUNS/<name>/<src>-<tgt>/teacher``), then every cell x seed (``RUNS/<name>/<src>-<tgt>/<cell>-s<seed>``);
score each on the test split (test_2016 for Multi30k; beam 5) with sacreBLEU and its 95% bootstrap CI,
writing ``test.json``/``test.hyp`` beside the run, and its result to ``cell.json`` in the run folder.
Cells of a method that trains on generated data (sequence-level KD) train on the teacher's beam translations,
written once per direction by ``distill_data`` (decoded by the grid's ``seq_kd_engine``) into
``RUNS/<name>/<src>-<tgt>/seqkd-data-b<beam>`` (``-<engine>`` appended for CTranslate2). Cells of a method that
needs no teacher at all (No KD) are trained with the plain ``train`` recipe, every other with ``distill``. Cells with
``kd_cache_topk`` read their KD term from a cache of the teacher's top K (``a2d distill-data --cache-topk``),
built once per direction, K and temperature into ``RUNS/<name>/<src>-<tgt>/kd-cache-top<K>-t<T>``; with
``kd_cache_attention`` the cache (``...-att``) holds the teacher's attention maps too, and A2D trains without it.

A cell whose result is in its ``cell.json``, or in the results JSON while its run folder is absent, is
skipped; a run that was started and not finished is resumed (``resume=True``); a finished run without
``cell.json`` is only scored; so the grid can be run in pieces (``--only``), interrupted, and continued on
other machines or in later sessions. To redo a cell, remove its run folder and pass ``--redo``. A finished
teacher goes on from its last checkpoint when the grid raises its budget (``max_epochs``), until a student is
distilled from it.
Training wall time is measured per piece (updated at every epoch end, so an interrupted piece still
counts up to its last checkpoint) and summed; every piece records its hardware and commit.

With ``store_teachers: true`` the teacher is kept once it is scored, and every student once it is scored
(:mod:`a2d.experiments.stores`). When the teacher's run folder is gone, students are distilled from the stored
copy, so a grid can go on in another session with the teacher its earlier students had. A teacher whose
students exist is never trained again: without its run or a stored copy such a grid stops with an error.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from a2d.config import ConfigError, read_yaml, save_config
from a2d.data.corpus import locate_corpus
from a2d.data.prepare import prepare, summary_lines
from a2d.evaluate import evaluate_model
from a2d.experiments.compare import collect, distilled
from a2d.experiments.grid import TEACHER, Grid, load_grid
from a2d.experiments.files import read_json, read_written_lines, sha_lines
from a2d.experiments.plan import (CELL_FILE, WALL_FILE, Job, data_dir, eval_dir, kd_cache_dir, plan, run_metrics,
                                  run_status, seqkd_dir)
from a2d.experiments.report import write_report
from a2d.experiments.stores import (TEACHER_MANIFEST, WEIGHTS, results_paths, round_to_fp16, store_student,
                                    store_teacher, stored_teacher, stored_teacher_vocab, teacher_store)
from a2d.provenance import commit, hardware, now
from a2d.recipes.cache_teacher import build_cache
from a2d.recipes.distill import distill
from a2d.recipes.distill_data import distill_data
from a2d.recipes.train import train
from a2d.rundir import RunDir, model_config
from a2d.teacher_cache import INDEX_FILE
from a2d.training import should_stop
from a2d.utils import UserError, atomic_dir, atomic_write_text, sha256_file


#: What scoring a run writes beside it (:func:`evaluate_job`): results of the model as it was scored.
SCORED_FILES = (CELL_FILE, "test.json", "test.hyp")


def reproduce(args, log=print) -> None:
    """What the arguments of ``a2d reproduce`` (:func:`a2d.experiments.command.add_arguments`) say: a dry run, the
    report only, or the grid's work."""
    grid = load_grid(args.grid)
    if args.dry_run:
        dry_run(grid, args.runs_dir, args.results_dir, args.only, log=log, redo=args.redo)
    elif args.report_only:
        json_path, md_path = write_report(grid, args.runs_dir, args.results_dir, log)
        log(f"wrote {json_path} and {md_path}")
    else:
        try:
            run_grid(grid, args.runs_dir, args.results_dir, args.only, log=log, redo=args.redo)
        except KeyboardInterrupt:
            log("interrupted: run the same command again to continue")
            raise


# =============================================================================================== stages
def ensure_data(grid: Grid, runs: Path, direction: str, log, results: Path | None = None) -> Path:
    out = data_dir(grid, runs, direction)
    src, tgt = direction.split("-")
    # A stored teacher outlives the data it was trained on: the data is prepared again with the teacher's own
    # SentencePiece model (training a new one gives the same pieces but not the same file, and the students
    # must share the teacher's vocabulary byte for byte).
    stored_vocab = stored_teacher_vocab(grid, results, direction)
    request = {"corpus": grid.corpus, "vocab_size": grid.vocab_size, "max_train": grid.max_train}
    if (out / "meta.json").is_file():
        recorded = read_json(out / "quality-data.json") or {"max_train": read_json(out / "meta.json")["max_train"]}
        differ = [k for k in request if k in recorded and recorded[k] != request[k]]
        if differ:
            raise UserError(f"{out} was prepared with {', '.join(f'{k}={recorded[k]}' for k in differ)}; the grid asks "
                            f"for {', '.join(f'{k}={request[k]}' for k in differ)}: use another --runs-dir")
        _check_teacher_vocab(stored_vocab, out)
        return out
    log(f"== prepare {grid.corpus} {direction} -> {out}")
    meta = prepare(out, locate_corpus(grid.corpus, src, tgt), src, tgt, vocab_size=grid.vocab_size,
                   max_train=grid.max_train, vocab=stored_vocab, log=log)
    atomic_write_text(out / "quality-data.json", json.dumps(request, indent=2) + "\n")
    log("\n".join(summary_lines(meta)))
    return out




def _check_teacher_vocab(stored_vocab: Path | None, data: Path) -> None:
    if stored_vocab is not None and sha256_file(data / "sentencepiece.model") != sha256_file(stored_vocab):
        raise UserError(f"{data}: prepared with another SentencePiece model than the stored teacher's {stored_vocab}; "
                        "remove this data directory and run again (it is prepared anew with the teacher's model)")


def ensure_eval_dir(grid: Grid, runs: Path, direction: str) -> Path:
    """The data directory the test is scored on: the data itself, or a copy holding its first N test pairs."""
    data, out = data_dir(grid, runs, direction), eval_dir(grid, runs, direction)
    if out == data or (out / "meta.json").is_file():
        return out
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    n = grid.test_max_sentences
    with atomic_dir(out) as tmp:
        shutil.copyfile(data / "sentencepiece.model", tmp / "sentencepiece.model")
        for lang in (meta["src"], meta["tgt"]):
            lines = read_written_lines(data / f"test.{lang}")[:n]
            (tmp / f"test.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        meta["test_max_sentences"] = n
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def ensure_seqkd_data(grid: Grid, runs: Path, direction: str, data: Path, teacher: Path, log) -> Path:
    out = seqkd_dir(grid, runs, direction)
    if (out / "meta.json").is_file():
        return out
    log(f"== {direction}: the teacher's translations of the training sources (beam {grid.seq_kd_beam}, "
        f"{grid.seq_kd_engine}) -> {out}")
    start = time.perf_counter()
    distill_data(teacher, data, out, beam=grid.seq_kd_beam, engine=grid.seq_kd_engine, log=log)
    atomic_write_text(out.with_name(out.name + ".timing.json"),
                      json.dumps({"seconds": round(time.perf_counter() - start, 1), "engine": grid.seq_kd_engine,
                                  "hardware": hardware(), "commit": commit(), "finished": now()}, indent=2) + "\n")
    return out


def ensure_kd_cache(grid: Grid, runs: Path, job: Job, data: Path, teacher: Path, log) -> Path:
    """The teacher cache the job's cell reads (its ``kd_cache_topk`` at its ``kd_temperature``), built (or finished:
    the builder resumes) from ``teacher`` over ``data`` first. The cache records the teacher and the data it was
    built from, and training refuses it for any other, so a cache left by another teacher fails, never misleads."""
    temperature = job.config(grid).settings.kd_temperature
    attention = job.cell.kd_cache_attention
    out = kd_cache_dir(grid, runs, job.direction, job.cell.kd_cache_topk, temperature, attention)
    log(f"== {job.id}: the teacher's top {job.cell.kd_cache_topk} at temperature {temperature:g}"
        + (" and its attention maps" if attention else "") + f" -> {out}")
    start = time.perf_counter()
    build_cache(teacher, data, out, job.cell.kd_cache_topk, temperature=temperature, attention=attention, log=log)
    timing = out.with_name(out.name + ".timing.json")
    if not timing.is_file():
        atomic_write_text(timing, json.dumps({"seconds": round(time.perf_counter() - start, 1), "hardware": hardware(),
                                              "commit": commit(), "finished": now()}, indent=2) + "\n")
    return out


def cache_finished(folder: Path) -> bool:
    index = folder / INDEX_FILE
    return index.is_file() and bool(read_json(index).get("complete"))


def continuable(job: Job, grid: Grid) -> tuple[Path | None, str]:
    """The finished run of the grid this one continues that ``job`` can go on from, or None, and why.

    It is the run of the same cell and seed (``RUNS/<continue_from>/<dir>/<cell>-s<seed>``) whose settings are the
    job's but for a smaller or equal ``max_epochs``. Nothing before that epoch depends on ``max_epochs`` (the
    inverse-sqrt schedule, lambda's decay and the batch order do not; resuming restores every random state), so
    going on from its last checkpoint trains the same student as starting over, in the epochs not yet run."""
    source = job.run.parents[2] / grid.continue_from / job.direction / job.run.name
    status = run_status(source)
    if status != "finished":
        return None, f"{source} is " + ("not finished" if status == "started" else "not a finished run")
    cfg = grid.cell_config(job.cell, job.seed)
    want = cfg.to_dict()
    # what a2d distill takes from the teacher where the cell leaves it unset (the same teacher: the same values)
    taken = ({"max_positions"} if "max_positions" not in cfg.given else set()) | ({"num_beams"} if not cfg.num_beams
                                                                                  else set())
    config_file = RunDir(source).config_file
    differ = _config_differences(config_file, {k: v for k, v in want.items() if k != "max_epochs" and k not in taken})
    if differ:
        return None, f"{source} was trained with {', '.join(differ)}"
    had = read_yaml(config_file).get("max_epochs", want["max_epochs"])
    if had > want["max_epochs"]:
        return None, f"{source} was trained for up to {had} epochs, more than this grid's {want['max_epochs']}"
    state = RunDir(source).state()
    return source, f"{source} (max_epochs {had} -> {want['max_epochs']}, {state.epoch - 1} epoch(s) done)"


def copy_to_continue(source: Path, run: Path, cfg) -> None:
    """Copy a finished run (not its test results) to ``run`` as a run to resume under ``cfg``, in one piece."""
    with atomic_dir(run) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*SCORED_FILES))
        RunDir(tmp).reopen()
        save_config(cfg, RunDir(tmp).config_file)


def train_job(job: Job, grid: Grid, data: Path, teacher_run: Path, seqkd: Path | None, log) -> None:
    """Train (or resume) the job's run, adding this piece's wall time to ``RUN/wall.json``."""
    run = job.run
    status = run_status(run)
    if status == "finished":
        return
    if status == "broken":
        log(f"   {job.id}: {run} holds files but no checkpoint (interrupted before its first save): starting over")
        shutil.rmtree(run)
        status = "new"
    source = None
    if status == "new" and job.cell is not None and grid.continue_from:
        source, why = continuable(job, grid)
        if source is not None:
            log(f"== {job.id}: continuing {why}")
            copy_to_continue(source, run, grid.cell_config(job.cell, job.seed))
            status = "started"
        else:
            log(f"   {job.id}: not continuing a run of grid {grid.continue_from}: {why}; training from the start")
    resume = status == "started"
    clock = WallClock(run, resumed=resume, continued_from=source)

    def job_log(msg: str) -> None:
        log(f"   [{job.id}] {msg}")

    def log_and_mark(msg: str) -> None:
        # The recipes offer no epoch-end hook; they say a line at every epoch end (once the run folder exists),
        # and that is when this piece's time is marked.
        job_log(msg)
        clock.mark()

    cfg = job.config(grid)
    if job.cell is not None and job.cell.kd_cache_topk is not None:
        cfg = grid.cell_config(job.cell, job.seed, kd_cache=ensure_kd_cache(grid, run.parents[2], job, data,
                                                                             teacher_run, log))
    log(f"== {job.id}: " + ("resuming " if resume else "training ") + str(run))
    if job.cell is None or not job.cell.needs_teacher:  # the teacher, and No KD: cross-entropy on the corpus
        train(cfg, data, run, resume=resume, log=log_and_mark)
    elif job.cell.method_class.generated_data:  # cross-entropy on the teacher's translations
        distill(cfg, seqkd, run, None, resume=resume, log=log_and_mark)
    else:
        distill(cfg, data, run, teacher_run, resume=resume, log=log_and_mark)
    clock.mark()


class WallClock:
    """``RUN/wall.json``: the wall time of each piece of a job's training (one process training it, from its start
    or its resume), with the hardware and commit of the piece. The piece's time so far is written at each
    :meth:`mark`, so an interrupted piece still counts up to its last mark."""

    def __init__(self, run: Path, resumed: bool, continued_from: Path | None = None):
        self.run = run
        self.pieces = (read_json(run / WALL_FILE, {}) or {}).get("pieces", []) if resumed else []
        self.piece = {"hardware": hardware(), "commit": commit(), "started": now(), "seconds": 0.0, "resumed": resumed}
        if continued_from is not None:
            self.piece["continued_from"] = str(continued_from)
        self.start = time.perf_counter()

    def mark(self) -> None:
        """Write this piece's time so far (once the run folder exists: the recipe makes it)."""
        self.piece["seconds"] = round(time.perf_counter() - self.start, 1)
        self.piece["ended"] = now()
        if self.run.is_dir():
            atomic_write_text(self.run / WALL_FILE,
                              json.dumps({"pieces": self.pieces + [self.piece]}, indent=2) + "\n")


def evaluate_job(job: Job, grid: Grid, evaldir: Path, log) -> dict:
    """Score the run on the test split, write ``test.json``/``test.hyp`` and ``cell.json``; return the record."""
    run = job.run
    start = time.perf_counter()
    result = evaluate_model(run, evaldir, split="test", beam=grid.beam, out=run / "test.json", progress=False)
    hyps = read_written_lines(run / "test.hyp")
    refs = read_written_lines(evaldir / f"test.{result['tgt']}")
    pieces = (read_json(run / WALL_FILE, {}) or {}).get("pieces", [])
    cfg = job.config(grid)
    low, high = result["bleu_ci"]
    record = {
        "id": job.id, "grid": grid.name, "direction": job.direction, "cell": job.name,
        "seed": cfg.seed if job.cell is None else job.seed,
        "role": TEACHER if job.cell is None else "student",
        "method": None if job.cell is None else job.cell.method,
        "label": "Teacher" if job.cell is None else job.cell.label,
        "preset": grid.teacher_preset if job.cell is None else job.cell.preset,
        "overrides": grid.teacher_overrides if job.cell is None else job.cell.overrides + [f"seed={job.seed}"],
        "run": str(run),
        "bleu": result["bleu"], "bleu_ci": [low, high], "bleu_ci_halfwidth": (high - low) / 2,
        "chrf": result["chrf"], "chrf_ci": result["chrf_ci"], "signature": result["signature"],
        "test_sentences": result["sentences"],
        "beam": grid.beam, "decode_seconds": result["decode_seconds"],
        **run_metrics(run),
        "train_seconds": round(sum(p.get("seconds", 0.0) for p in pieces), 1) if pieces else None,
        "pieces": pieces,
        **({"continued_from": next(p["continued_from"] for p in pieces if "continued_from" in p)}
           if any("continued_from" in p for p in pieces) else {}),
        "hardware": "; ".join(dict.fromkeys(p["hardware"] for p in pieces)) if pieces else hardware(),
        "commit": ", ".join(dict.fromkeys(p["commit"] for p in pieces)) if pieces else commit(),
        "eval_hardware": hardware(), "eval_commit": commit(), "eval_seconds": round(time.perf_counter() - start, 1),
        "finished": now(),
        "hyp_sha256": sha_lines(hyps), "ref_sha256": sha_lines(refs),
    }
    if job.cell is not None and job.cell.method_class.generated_data:
        seqkd = seqkd_dir(grid, job.run.parents[2], job.direction)  # job.run = RUNS/<name>/<dir>/<cell>-s<seed>
        timing = read_json(seqkd.with_name(seqkd.name + ".timing.json"), None)
        record["seq_kd_data_seconds"] = timing.get("seconds") if timing else None
    atomic_write_text(run / CELL_FILE, json.dumps({**record, "hypotheses": hyps, "references": refs}, indent=1) + "\n")
    log(f"   {job.id}: test BLEU {record['bleu']:.2f} ± {record['bleu_ci_halfwidth']:.2f}, chrF {record['chrf']:.2f}"
        + (f", valid BLEU {record['valid_best_bleu']:.2f}" if record["valid_best_bleu"] is not None else ""))
    return record



# =============================================================================================== main
def _matches(job: Job, only: list[str] | None) -> bool:
    return not only or any(s in job.id for s in only)


def run_grid(grid: Grid, runs: Path, results: Path, only: list[str] | None, log=print, redo: bool = False) -> None:
    jobs = plan(grid, runs)
    done = {j.id for j in jobs if (j.run / CELL_FILE).is_file() and not goes_on(grid, j)}
    if not redo:  # results in the JSON count as done, also when their run folders are gone
        known, _ = collect(grid, runs, results, log=lambda _msg: None)
        done |= {j.id for j in jobs if j.id in known and run_status(j.run) == "new"}
    selected = [j for j in jobs if _matches(j, only)]
    if only and not selected:
        raise UserError(f"--only {' '.join(only)}: matches none of the {len(jobs)} cells (see --dry-run)")
    for d in grid.directions:
        pending = [j for j in selected if j.direction == d and j.id not in done]
        if not pending:
            continue
        data = ensure_data(grid, runs, d, log, results)
        evaldir = ensure_eval_dir(grid, runs, d)
        teacher = next(j for j in jobs if j.direction == d and j.cell is None)
        needs_teacher = any(j.cell is None or j.cell.needs_teacher for j in pending)
        teacher_path = teacher.run
        if needs_teacher:
            teacher_path = ensure_teacher(grid, runs, results, teacher, data, evaldir, done, log)
        seqkd = None
        if any(j.cell is not None and j.cell.method_class.generated_data for j in pending):
            seqkd = ensure_seqkd_data(grid, runs, d, data, teacher_path, log)
        for job in pending:
            if job.cell is None:
                continue
            train_job(job, grid, data, teacher_path, seqkd, log)
            record = evaluate_job(job, grid, evaldir, log)
            if grid.store_teachers:
                store_student(grid, results, job, record, log)
            done.add(job.id)
            write_report(grid, runs, results, log, figures=False)
    if grid.store_teachers:  # also the students scored before (in an earlier session, or by an older version)
        store_students(grid, [j for j in selected if j.cell is not None], results, log)
    json_path, md_path = write_report(grid, runs, results, log)
    log(f"wrote {json_path} and {md_path}")


def ensure_teacher(grid: Grid, runs: Path, results: Path, job: Job, data: Path, evaldir: Path, done: set, log) -> Path:
    """The teacher students are distilled from: its run folder (trained and scored first where need be), or,
    when the run is gone, the stored copy of the teacher the results describe. A teacher whose distilled
    students are in the results is never replaced by a newly trained one, nor trained further. A finished teacher
    that the grid's teacher settings would train further (a larger ``max_epochs``) goes on from its last checkpoint,
    and is scored and stored again, as long as no student was distilled from it."""
    why = goes_on(grid, job)
    if why:
        records, _ = collect(grid, runs, results, log=lambda _msg: None)
        students = distilled_students(records, job.direction)
        if students:
            raise UserError(f"{job.id}: the grid's teacher settings would train {job.run} further ({why}), but "
                            f"{', '.join(students)} were distilled from it as it is; give the teacher back its "
                            "settings, or run a grid with a new name")
        log(f"== {job.id}: going on from {job.run} ({why}); it is scored and stored again when it ends")
        reopen_teacher(grid, job)
        done.discard(job.id)
    status = run_status(job.run)
    if status == "started" and (job.run / CELL_FILE).is_file():
        raise UserError(f"{job.id}: {job.run} is a run to resume, but its cell.json holds a result; remove it")
    if status not in ("finished", "started"):
        if (job.run / CELL_FILE).is_file():
            raise UserError(f"{job.id}: its cell.json exists but the run {job.run} is not here to distill "
                            "from; copy the teacher's run folder, or remove its cell.json")
        records, _ = collect(grid, runs, results, log=lambda _msg: None)
        record = records.get(job.id)
        if record is not None:
            stored = stored_teacher(grid, results, job.direction, record)
            if stored is not None:
                if grid.continue_from:
                    _check_same_teacher(grid, model_config(stored), job.id)
                log(f"== {job.id}: its run is not here; distilling from the stored teacher {stored} "
                    f"(test BLEU {record['bleu']:.2f})")
                return stored
            if grid.continue_from:
                raise UserError(f"{job.id}: the teacher of grid {grid.continue_from} that this grid continues is "
                                f"neither in {job.run} nor stored in {teacher_store(grid, results, job.direction)}")
            students = distilled_students(records, job.direction)
            if students:
                raise UserError(f"{job.id}: {results_paths(grid, results)[0]} holds the teacher that "
                                f"{', '.join(students)} were distilled from, but its run {job.run} is not here and no "
                                f"copy is stored in {teacher_store(grid, results, job.direction)}; a teacher trained "
                                "now would be another one. Copy its run folder back, or run these cells in a grid "
                                "with a new name")
            log(f"   {job.id}: its run is not here and no student was distilled from it yet: training it again "
                "(the new teacher's result replaces the old one)")
            done.discard(job.id)
        elif grid.continue_from:
            raise UserError(f"{job.id}: grid {grid.continue_from}, which this grid continues, has no {job.direction} "
                            f"teacher: neither a finished run {job.run} nor a result in "
                            f"{results / f'quality-{grid.continue_from}.json'}; run that grid's teacher first")
    if grid.continue_from and status == "finished":
        _check_same_teacher(grid, RunDir(job.run).config_file, job.id)
    train_job(job, grid, data, job.run, None, log)
    if grid.teacher_dtype == "float16" and round_to_fp16(RunDir(job.run).best / WEIGHTS):
        if (job.run / CELL_FILE).is_file():
            raise UserError(f"{job.id}: scored before it was rounded to float16 (teacher_dtype); remove "
                            f"{job.run / CELL_FILE} to score the float16 teacher")
        log(f"   {job.id}: rounded its weights to float16 (teacher_dtype)")
    if (job.run / CELL_FILE).is_file():
        record = read_json(job.run / CELL_FILE)
    else:
        record = evaluate_job(job, grid, evaldir, log)
        done.add(job.id)
        write_report(grid, runs, results, log, figures=False)
    if grid.store_teachers:
        store_teacher(grid, results, job, record, log)
    return job.run


def distilled_students(records: dict[str, dict], direction: str) -> list[str]:
    """The ids of the results' students of ``direction`` that were distilled from its teacher."""
    return sorted(r["id"] for r in records.values() if r["direction"] == direction and distilled(r))


def goes_on(grid: Grid, job: Job) -> str | None:
    """Why the teacher's finished run would train further under the grid's teacher settings now, or None.

    A run ends when :func:`a2d.training.should_stop` says so; a grid that raised ``max_epochs`` (or ``max_steps``, or
    ``patience``) since makes it say nothing. Nothing before the old end depends on those settings (the
    inverse-sqrt schedule and the batch order do not; a resume restores every random state), so going on trains the
    teacher a longer first run would have, and its best checkpoint can only get better on validation. The teacher
    of a grid that continues another belongs to that grid, and is left as it is."""
    if job.cell is not None or grid.continue_from or run_status(job.run) != "finished":
        return None
    cfg = grid.teacher_config()
    run = RunDir(job.run)
    if should_stop(run.state(), cfg) is not None:
        return None
    had = read_yaml(run.config_file)
    changed = [f"{k} {had[k]} -> {getattr(cfg, k)}" for k in ("max_epochs", "max_steps", "patience")
               if k in had and had[k] != getattr(cfg, k)]
    return ", ".join(changed) or "the run ended before its budget"


def reopen_teacher(grid: Grid, job: Job) -> None:
    """Make the finished teacher run a run to resume under the grid's teacher settings: its test results go (they
    describe the teacher as it was), its state says unfinished, its config.yaml says the new budget."""
    for name in SCORED_FILES:
        (job.run / name).unlink(missing_ok=True)
    run = RunDir(job.run)
    run.reopen()
    save_config(grid.teacher_config(), run.config_file)


def _config_differences(config_file: Path, want: dict) -> list[str]:
    """The settings of ``want`` that the run's saved config.yaml holds with another value (keys it lacks: skipped)."""
    try:
        had = read_yaml(config_file)
    except ConfigError as e:
        raise UserError(str(e)) from None
    return [f"{k}={had[k]!r} (not {want[k]!r})" for k in want if k in had and had[k] != want[k]]


def _check_same_teacher(grid: Grid, config_file: Path, what: str) -> None:
    """A grid that continues another distils from that grid's teacher: its own teacher settings must be the same."""
    if config_file.is_file():
        differ = _config_differences(config_file, grid.teacher_config().to_dict())
        if differ:
            raise UserError(f"{grid.path}: teacher: the teacher of grid {grid.continue_from} ({what}) was trained with "
                            f"{', '.join(differ)}; give this grid the same teacher settings")


def dry_run(grid: Grid, runs: Path, results: Path, only: list[str] | None, log=print, redo: bool = False) -> None:
    known, _ = collect(grid, runs, results, log)
    jobs = plan(grid, runs)
    todo = 0
    for d in grid.directions:
        log(f"{d}: data {data_dir(grid, runs, d)} " + ("(prepared)" if (data_dir(grid, runs, d) / 'meta.json').is_file()
                                                       else "(to prepare)"))
        if any(j.cell is not None and j.cell.method_class.generated_data for j in jobs if j.direction == d):
            s = seqkd_dir(grid, runs, d)
            log(f"{d}: seq-kd data {s} " + ("(written)" if (s / 'meta.json').is_file() else "(to write)"))
        caches = {kd_cache_dir(grid, runs, d, j.cell.kd_cache_topk, j.config(grid).settings.kd_temperature,
                               j.cell.kd_cache_attention)
                  for j in jobs if j.direction == d and j.cell is not None and j.cell.kd_cache_topk is not None}
        for c in sorted(caches):
            log(f"{d}: teacher cache {c} " + ("(built)" if cache_finished(c) else "(to build)"))
    for job in jobs:
        if not _matches(job, only):
            continue
        status = run_status(job.run)
        rec = known.get(job.id)
        local = (job.run / CELL_FILE).is_file()
        why = goes_on(grid, job)
        if why:
            todo += 1
            state = f"to go on ({why})"
        elif local or (rec is not None and not redo and status == "new"):
            state = f"done: test BLEU {rec['bleu']:.2f}"
            if not local and job.cell is None:
                stored = (teacher_store(grid, results, job.direction) / TEACHER_MANIFEST).is_file()
                state += " (stored copy)" if stored else " (run not here)"
            elif not local:
                state += " (in the JSON)"
            wanted = None if job.cell is None else job.cell.overrides + [f"seed={job.seed}"]
            if wanted and rec.get("overrides") and rec["overrides"] != wanted:
                state += " [other overrides than the grid's now]"
        else:
            todo += 1
            state = {"finished": "trained, to score", "started": "started, to resume", "broken": "to restart",
                     "new": "to train"}[status]
            if status == "new" and job.cell is not None and grid.continue_from and continuable(job, grid)[0]:
                state = f"to continue {grid.continue_from}'s run"
            if rec is not None:
                state += " (replaces a result in the JSON)"
        what = "teacher " + grid.teacher_preset if job.cell is None else \
            f"{job.cell.method} {job.cell.preset} {' '.join(job.cell.overrides)}".rstrip()
        log(f"  {job.id:<40} {state:<48} {what}")
    log(f"{todo} cell(s) to run" + (f" (of those matching --only {' '.join(only)})" if only else ""))




def store_students(grid: Grid, jobs: list[Job], results: Path, log) -> None:
    """Keep the best student of every scored job whose run is here (``store_teachers: true``)."""
    for job in jobs:
        record = read_json(job.run / CELL_FILE)
        if record is not None and RunDir(job.run).best.is_dir():
            store_student(grid, results, job, record, log)


__all__ = ["reproduce", "run_grid", "dry_run", "train_job", "evaluate_job", "ensure_teacher", "ensure_data", "store_students"]
