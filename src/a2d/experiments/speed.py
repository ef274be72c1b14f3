"""Speed, size and quality of a teacher and its students, in the terms of the WMT efficiency task
(``python benchmarks/speed.py``).

For every model (the teacher and each student), engine (``--engines``: Hugging Face fp32; CTranslate2 float32 and
int8, exported with ``a2d export``) and thread count (``--threads``), on a split of a prepared data directory:

* throughput at every beam (``--beam``): target tokens/s and sentences/s, batched by source tokens
  (``--max-tokens``). Target tokens are decoder steps, counted from the engine's own output ids (each hypothesis's
  tokens up to and including ``</s>``: :meth:`a2d.translator.BatchTranslator.translate_ids`), never by
  re-encoding the text, which would credit a bad model with the pieces of its output's text;
* latency at every beam: batch-1 translation time per sentence (p50, p90) over the first ``--latency-sentences``;
* peak resident memory of the process that loaded the model and ran all of the above: one fresh process per
  model x engine x threads, so the peaks are not mixed (a2d's translators import torch for either engine);
* size on disk: the weights file, and the whole folder with its tokenizer;
* BLEU and chrF (sacreBLEU) of the very outputs that were timed.

``--force-length L`` makes every hypothesis exactly ``L`` decoder steps on every engine, so that random or weak
models (which stop too early or never) are timed on equal work; their BLEU then means nothing.

``--shortlist`` also times every CTranslate2 engine with a lexical shortlist (:mod:`a2d.shortlist`, built from the
data directory's train split with ``--top-n`` and ``--frequent`` into each export): rows ``ct2-int8+shortlist``
and ``ct2-float32+shortlist`` beside the plain ones, and the target "shortlist" (:func:`targets`).

``--translators`` also times every CTranslate2 engine, at each thread count N above 1, as N translators of one
thread (CTranslate2's ``inter_threads``: :class:`a2d.translator.CT2Translator`), which decode different batches at
once: rows ``ENGINE+translators`` at N threads, beside the rows of one translator on N threads. Their batch-1
latency is that of one translator of one thread.

The report (PREFIX.json, PREFIX.md, PREFIX.png: BLEU against target tokens/s, the Pareto view) checks the
targets of the issue "The student that ships" for ``--teacher`` and the student named by ``--target-student``
(the other students are in the table only): see :func:`targets`. Ratios within one run are what to read: the
machine may be shared, so the load average is recorded before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from a2d.data.prepare import ParallelData
from a2d.data.vocab import Vocabulary, check_same_vocabulary
from a2d.errors import BadValue
from a2d.evaluate import score
from a2d.export import check_quantization, export, folder_size, require_ctranslate2
from a2d.models import resolve_model_dir
from a2d.provenance import commit, now
from a2d.shortlist import DEFAULT_FREQUENT, DEFAULT_TOP_N, write_shortlist
from a2d.translator import CT2Translator, HFTranslator
from a2d.utils import UserError, atomic_savefig, atomic_write_text, check_writable_parent, peak_rss_bytes

ENGINES = ("hf-fp32", "ct2-float32", "ct2-int8")
BEAMS, THREADS = (1, 5), (1, 2)  # the defaults: the peers ship greedy, the paper decodes with beam 5
TARGET_BEAM, TARGET_THREADS = 5, 1  # where the speed targets are read
TEACHER = "teacher"  # the teacher's name in the rows
SHORTLIST = "+shortlist"  # appended to a CTranslate2 engine's name in the rows timed with the shortlist
TRANSLATORS = "+translators"  # appended (after SHORTLIST) in the rows timed as N translators of one thread


# =============================================================================================== one process
def measure(engine: str, folder: str, data: str, split: str, threads: int, beams: list[int], max_tokens: int,
            latency_sentences: int, force_length: int | None = None, sentences: int | None = None,
            shortlist: bool = False, repeats: int = 1, translators: bool = False) -> dict:
    """Load ``folder`` with ``engine`` on ``threads`` threads, then at every beam: time the split (warm), score
    the timed outputs, time batch-1 latency. ``repeats``: the split is translated that many times and the median
    time counts (every pass's time is kept; the outputs of each pass are the same). Meant to run in a fresh
    process (:func:`in_fresh_process`): the peak resident memory it reports is its process's. ``shortlist``: a
    CTranslate2 engine decodes with the folder's vocabulary map (the row's engine is then ``ENGINE+shortlist``).
    ``translators``: a CTranslate2 engine runs as ``threads`` translators of one thread (``ENGINE+translators``)."""
    if (shortlist or translators) and engine == "hf-fp32":
        raise ValueError("a shortlist and translators are for the CTranslate2 engines")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    test = ParallelData.load(data, split)
    sources, references = test.src_text[:sentences], test.tgt_text[:sentences]
    start = time.perf_counter()
    if engine == "hf-fp32":
        translator = HFTranslator.load(folder, device="cpu")
    else:
        translator = CT2Translator(folder, threads=1 if translators else threads, shortlist=shortlist,
                                   translators=threads if translators else 1)
    result = {"engine": engine + (SHORTLIST if shortlist else "") + (TRANSLATORS if translators else ""),
              "threads": threads,
              "load_seconds": round(time.perf_counter() - start, 3), "runs": {}, "latency_ms": {}}
    decode = dict(max_tokens=max_tokens, force_length=force_length)
    translator.translate_ids(sources[:20], beam=max(beams), **decode)  # warm-up
    for beam in beams:
        passes = []
        for _ in range(repeats):
            start = time.perf_counter()
            ids = translator.translate_ids(sources, beam=beam, **decode)
            hypotheses = [translator.detokenize(x) for x in ids]
            passes.append(time.perf_counter() - start)
        seconds = percentile(passes, 50)
        steps = sum(len(x) for x in ids)
        s = score(hypotheses, references, n_bootstrap=1, tgt_lang=test.meta.get("tgt"))
        result["runs"][f"beam{beam}"] = {
            "seconds": round(seconds, 3), "passes_seconds": [round(x, 3) for x in passes],
            "sentences": len(sources), "target_tokens": steps,
            "tokens_per_s": round(steps / seconds, 1), "sentences_per_s": round(len(sources) / seconds, 2),
            "bleu": round(s["bleu"], 2), "chrf": round(s["chrf"], 2), "signature": s["signature"]}
        times = []
        for text in sources[:latency_sentences]:
            start = time.perf_counter()
            translator.translate_ids([text], beam=beam, **decode)
            times.append(time.perf_counter() - start)
        result["latency_ms"][f"beam{beam}"] = {"p50": round(1000 * percentile(times, 50), 2),
                                               "p90": round(1000 * percentile(times, 90), 2),
                                               "sentences": len(times), "batch": 1}
    result["peak_rss_mib"] = round(peak_rss_bytes() / 2**20, 1)
    return result


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values``, linearly interpolated (numpy's default); nan for none."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def in_fresh_process(*args, **kwargs) -> dict:
    """:func:`measure` in a new interpreter (spawned, not forked: nothing of this process's memory is shared)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(measure, *args, **kwargs).result()


# =============================================================================================== the targets
def _row(rows: list[dict], model: str, engine: str, threads: int = TARGET_THREADS) -> dict | None:
    return next((r for r in rows if (r["model"], r["engine"], r["threads"]) == (model, engine, threads)), None)


def _run(rows: list[dict], model: str, engine: str, beam: int = TARGET_BEAM, threads: int = TARGET_THREADS):
    row = _row(rows, model, engine, threads)
    return None if row is None else row["runs"].get(f"beam{beam}")


def targets(rows: list[dict], student: str | None, teacher: str = TEACHER, forced: bool = False) -> list[dict]:
    """The targets of the issue "The student that ships", each ``{"name", "target", "value", "met", "detail"}``
    (``met`` None: not measured, or not meaningful, and ``detail`` says why):

    * ``speed vs teacher CT2 int8``: the student's CTranslate2 int8 target tokens/s at beam 5 on 1 thread is
      >= 3x the teacher's CTranslate2 int8;
    * ``speed vs teacher HF fp32``: the same >= 10x the teacher's Hugging Face fp32;
    * ``int8 BLEU``: the student's CTranslate2 int8 BLEU (beam 5) is within 0.3 of its CTranslate2 float32
      (not judged with forced lengths);
    * ``size``: the student's int8 folder is <= 1/4 of the teacher's CTranslate2 float32 folder;
    * with shortlist rows (``--shortlist``; issue 37): ``shortlist speed``, the student's CTranslate2 int8 with the
      shortlist is >= 1.5x its int8 without, and ``shortlist BLEU``, within 0.2 BLEU of it (not judged with forced
      lengths).
    """
    where = f"beam {TARGET_BEAM}, {TARGET_THREADS} thread"
    if student is None:
        return [{"name": "all", "target": "", "value": None, "met": None,
                 "detail": "not judged: no --target-student named"}]
    out = []

    def missing(*needs):
        return "not measured: needs " + " and ".join(f"{m} {e}" for m, e in needs) + f" at {where}"

    student_i8 = _run(rows, student, "ct2-int8")
    for name, engine, factor in (("speed vs teacher CT2 int8", "ct2-int8", 3.0),
                                 ("speed vs teacher HF fp32", "hf-fp32", 10.0)):
        target = f"{student} ct2-int8 tokens/s >= {factor:g}x {teacher} {engine} ({where})"
        base = _run(rows, teacher, engine)
        if student_i8 is None or base is None:
            out.append({"name": name, "target": target, "value": None, "met": None,
                        "detail": missing((student, "ct2-int8"), (teacher, engine))})
            continue
        ratio = student_i8["tokens_per_s"] / base["tokens_per_s"]
        out.append({"name": name, "target": target, "value": round(ratio, 2), "met": ratio >= factor,
                    "detail": f"{student_i8['tokens_per_s']:,.0f} / {base['tokens_per_s']:,.0f} tokens/s = "
                              f"{ratio:.2f}x"})
    target = f"{student} ct2-int8 BLEU within 0.3 of its ct2-float32 (beam {TARGET_BEAM})"
    f32 = _run(rows, student, "ct2-float32")
    if forced:
        out.append({"name": "int8 BLEU", "target": target, "value": None, "met": None,
                    "detail": "not judged: --force-length outputs are not translations"})
    elif student_i8 is None or f32 is None:
        out.append({"name": "int8 BLEU", "target": target, "value": None, "met": None,
                    "detail": missing((student, "ct2-int8"), (student, "ct2-float32"))})
    else:
        diff = student_i8["bleu"] - f32["bleu"]
        out.append({"name": "int8 BLEU", "target": target, "value": round(diff, 2), "met": abs(diff) <= 0.3 + 1e-9,
                    "detail": f"{student_i8['bleu']:.2f} - {f32['bleu']:.2f} = {diff:+.2f} BLEU"})
    target = f"{student} ct2-int8 folder <= 1/4 of {teacher} ct2-float32 folder"
    small = next((r for r in rows if (r["model"], r["engine"]) == (student, "ct2-int8")), None)
    big = next((r for r in rows if (r["model"], r["engine"]) == (teacher, "ct2-float32")), None)
    if small is None or big is None:
        out.append({"name": "size", "target": target, "value": None, "met": None,
                    "detail": f"not measured: needs {student} ct2-int8 and {teacher} ct2-float32"})
    else:
        share = small["folder_bytes"] / big["folder_bytes"]
        out.append({"name": "size", "target": target, "value": round(share, 4), "met": share <= 0.25,
                    "detail": f"{small['folder_bytes'] / 2**20:.2f} / {big['folder_bytes'] / 2**20:.2f} MiB = "
                              f"{share:.1%}"})
    if any(SHORTLIST in r["engine"] for r in rows):
        out += _shortlist_targets(rows, student, forced)
    return out


def _shortlist_targets(rows: list[dict], student: str, forced: bool) -> list[dict]:
    """The student's CTranslate2 int8 with its shortlist against without: >= 1.5x the tokens/s, within 0.2 BLEU."""
    where = f"beam {TARGET_BEAM}, {TARGET_THREADS} thread"
    plain, short = _run(rows, student, "ct2-int8"), _run(rows, student, "ct2-int8" + SHORTLIST)
    speed = f"{student} ct2-int8{SHORTLIST} tokens/s >= 1.5x its ct2-int8 ({where})"
    bleu = f"{student} ct2-int8{SHORTLIST} BLEU within 0.2 of its ct2-int8 ({where})"
    if plain is None or short is None:
        detail = f"not measured: needs {student} ct2-int8 with and without the shortlist at {where}"
        return [{"name": name, "target": target, "value": None, "met": None, "detail": detail}
                for name, target in (("shortlist speed", speed), ("shortlist BLEU", bleu))]
    ratio = short["tokens_per_s"] / plain["tokens_per_s"]
    out = [{"name": "shortlist speed", "target": speed, "value": round(ratio, 2), "met": ratio >= 1.5,
            "detail": f"{short['tokens_per_s']:,.0f} / {plain['tokens_per_s']:,.0f} tokens/s = {ratio:.2f}x"}]
    if forced:
        out.append({"name": "shortlist BLEU", "target": bleu, "value": None, "met": None,
                    "detail": "not judged: --force-length outputs are not translations"})
    else:
        diff = short["bleu"] - plain["bleu"]
        out.append({"name": "shortlist BLEU", "target": bleu, "value": round(diff, 2), "met": abs(diff) <= 0.2 + 1e-9,
                    "detail": f"{short['bleu']:.2f} - {plain['bleu']:.2f} = {diff:+.2f} BLEU"})
    return out


def target_lines(found: list[dict]) -> list[str]:
    verdict = {True: "met", False: "MISSED", None: "not judged"}
    return [f"- **{t['name']}**" + (f" ({t['target']})" if t["target"] else "") + f": {t['detail']}: "
            f"{verdict[t['met']]}" for t in found]


# =============================================================================================== the report
def table(rows: list[dict], teacher: str = TEACHER) -> str:
    head = ("| model | engine | threads | beam | target tok/s | x teacher | sent/s | BLEU | chrF | "
            "latency p50 / p90 ms (batch 1) | peak RSS MiB | weights MiB | folder MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        for key, run in r["runs"].items():
            base = _run(rows, teacher, r["engine"], int(key[4:]), r["threads"])
            ratio = f"{run['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else ""
            lat = r["latency_ms"].get(key, {})
            latency = f"{lat['p50']:.1f} / {lat['p90']:.1f}" if lat.get("sentences") else ""
            lines.append(f"| {r['model']} | {r['engine']} | {r['threads']} | {key[4:]} | {run['tokens_per_s']:,.0f} | "
                         f"{ratio} | {run['sentences_per_s']:.1f} | {run['bleu']:.2f} | {run['chrf']:.2f} | {latency} | "
                         f"{r['peak_rss_mib']:.0f} | {r['weights_bytes'] / 2**20:.2f} | "
                         f"{r['folder_bytes'] / 2**20:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, beam: int, threads: int, forced: int | None = None) -> None:
    """BLEU against target tokens/s at ``beam`` on ``threads`` threads, one marker per engine (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"hf-fp32": "o", "ct2-float32": "s", "ct2-int8": "^"}
    for engine in dict.fromkeys(r["engine"] for r in rows):
        pts = [(r["runs"][f"beam{beam}"]["tokens_per_s"], r["runs"][f"beam{beam}"]["bleu"], r["model"])
               for r in rows if r["engine"] == engine and r["threads"] == threads and f"beam{beam}" in r["runs"]]
        if not pts:
            continue
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[engine.split("+")[0]],
                   label=engine)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"target tokens/s (decoder steps; beam {beam}, {threads} thread(s), log scale)")
    ax.set_ylabel("BLEU (the timed outputs)")
    ax.set_title("BLEU against speed (up and right is better)" if forced is None else
                 f"speed at forced length {forced} (BLEU is not meaningful)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def hardware(threads: list[int]) -> dict:
    try:
        import ctranslate2
    except ImportError:  # only --engines hf-fp32 was asked for
        ctranslate2 = None
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "ctranslate2": ctranslate2.__version__ if ctranslate2 else "not installed",
            "ct2_cpu_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")) if ctranslate2 else [],
            "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def markdown(report: dict, models: list[str]) -> str:
    hw, s = report["hardware"], report["settings"]
    rows = report["results"]
    n = rows[0]["runs"][next(iter(rows[0]["runs"]))]["sentences"] if rows else 0
    length = (f"every hypothesis forced to exactly {s['force_length']} decoder steps (BLEU not meaningful)"
              if s["force_length"] else "free lengths (up to 1.2 x source + 10)")
    if s.get("shortlist"):
        length += (f"; engines ending {SHORTLIST} decode with a lexical shortlist (a2d shortlist on the train split: "
                   f"top {s['shortlist']['top_n']} target pieces per source piece, {s['shortlist']['frequent']} "
                   "frequent ones always)")
    if s.get("translators"):
        length += (f"; engines ending {TRANSLATORS} run as N CTranslate2 translators of one thread (N: the row's "
                   "threads), decoding different batches at once (their latency: one translator of one thread)")
    return "\n".join([
        f"# Speed, size and quality: {', '.join(models)}", "",
        f"`{report['command']}`", "",
        f"commit {report['commit']}, {report['date']}; {hw['cpu']}, {hw['cores']} cores; torch {hw['torch']}, "
        f"ctranslate2 {hw['ctranslate2']}; load average before {hw['load_average_before']}, after "
        f"{hw['load_average_after']}" + (f"; {report['note']}" if report["note"] else ""), "",
        f"{n} sentences of the {s['split']} split, batches of at most {s['max_tokens']} source tokens; {length}. "
        "Target tokens are decoder steps (each hypothesis's output ids through </s>, from the engine); "
        + (f"tokens/s: the median of {s['repeats']} timed passes over the split; " if s.get("repeats", 1) > 1 else "")
        + "BLEU/chrF are of the timed outputs; "
        f"latency is one sentence at a time over the first {s['latency_sentences']}; "
        "x teacher: tokens/s over the teacher's at the same engine, threads and beam; peak RSS is that of a fresh "
        "process per model, engine and threads.", "",
        table(rows, report["teacher"]), "",
        f"Targets ({report['target_student'] or 'no --target-student'} against {report['teacher']}):", "",
        *target_lines(report["targets"]), ""])


# =============================================================================================== the command
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as a2d's commands say it
        raise UserError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="benchmarks/speed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared data directory (its --split is translated)")
    p.add_argument("--split", default="test")
    p.add_argument("--teacher", required=True, help="the teacher's model folder (or run folder)")
    p.add_argument("--student", action="append", default=[], metavar="NAME=RUN", help="a student (repeatable)")
    p.add_argument("--target-student", metavar="NAME", help="the student whose targets are checked")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.json, PREFIX.md, PREFIX.png")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), metavar="ENGINE",
                   help=f"a subset of {' '.join(ENGINES)} (default all)")
    p.add_argument("--beam", nargs="+", type=int, default=list(BEAMS), metavar="N", help="beam sizes (default 1 5)")
    p.add_argument("--threads", nargs="+", type=int, default=list(THREADS), metavar="N",
                   help="intra-op thread counts, torch and CTranslate2 alike (default 1 2)")
    p.add_argument("--force-length", type=int, metavar="L",
                   help="every hypothesis exactly L decoder steps (to time random or weak models fairly)")
    p.add_argument("--max-tokens", type=int, default=2000, help="source tokens per batch (default 2000)")
    p.add_argument("--latency-sentences", type=int, default=100, help="batch-1 latency over the first N (default 100)")
    p.add_argument("--sentences", type=int, metavar="N", help="translate the first N sentences only (default all)")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="time the split N times and count the median pass (default 1)")
    p.add_argument("--shortlist", action="store_true", help="also time every ct2 engine with a lexical shortlist "
                   "(a2d shortlist from --data's train split)")
    p.add_argument("--top-n", type=int, metavar="N",
                   help=f"with --shortlist: target pieces per source piece (default {DEFAULT_TOP_N})")
    p.add_argument("--frequent", type=int, metavar="K",
                   help=f"with --shortlist: frequent target pieces always allowed (default {DEFAULT_FREQUENT})")
    p.add_argument("--translators", action="store_true", help="also time every ct2 engine at each --threads N "
                   "above 1 as N translators of one thread (CTranslate2's inter_threads)")
    p.add_argument("--note", default="", help="a line recorded with the results (e.g. what else ran)")
    return p


def check(args) -> tuple[list[tuple[str, Path]], list[int], list[int], list[str]]:
    """Every option checked before any work: the models, beams, threads and engines, or a one-line UserError."""
    engines = list(dict.fromkeys(args.engines))
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise UserError(f"--engines {' '.join(unknown)}: choose from {', '.join(ENGINES)}")
    beams, threads = list(dict.fromkeys(args.beam)), list(dict.fromkeys(args.threads))
    for option, values in (("--beam", beams), ("--threads", threads)):
        bad = [v for v in values if v < 1]
        if bad:
            raise UserError(f"{option} {bad[0]}: must be at least 1")
    for option, value in (("--max-tokens", args.max_tokens), ("--sentences", args.sentences),
                          ("--force-length", args.force_length), ("--repeats", args.repeats)):
        if value is not None and value < 1:
            raise UserError(f"{option} {value}: must be at least 1")
    if args.latency_sentences < 0:
        raise UserError(f"--latency-sentences {args.latency_sentences}: must be at least 0")
    if not args.shortlist and (args.top_n is not None or args.frequent is not None):
        raise UserError("--top-n/--frequent: used with --shortlist only")
    args.top_n = DEFAULT_TOP_N if args.top_n is None else args.top_n
    args.frequent = DEFAULT_FREQUENT if args.frequent is None else args.frequent
    if args.shortlist:
        if not any(e.startswith("ct2-") for e in engines):
            raise UserError(f"--shortlist: for the CTranslate2 engines, and --engines has none ({' '.join(engines)})")
        if args.top_n < 1:
            raise UserError(f"--top-n {args.top_n}: must be at least 1")
        if args.frequent < 0:
            raise UserError(f"--frequent {args.frequent}: must be at least 0")
        ParallelData.load(args.data, "train")  # the shortlist's counts: a UserError without a train split
    if args.translators:
        if not any(e.startswith("ct2-") for e in engines):
            raise UserError(f"--translators: for the CTranslate2 engines, and --engines has none ({' '.join(engines)})")
        if max(threads) < 2:
            raise UserError("--translators: N translators of one thread for each --threads N above 1, and --threads "
                            f"has none ({' '.join(map(str, threads))})")
    students = []
    for spec in args.student:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder:
            raise UserError(f"--student {spec}: give NAME=RUN")
        students.append((name.strip(), folder))
    names = [TEACHER] + [n for n, _ in students]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise UserError(f"--student {dup}=...: the name {dup!r} is taken" + (" by the teacher" if dup == TEACHER else ""))
    if args.target_student is not None and args.target_student not in names[1:]:
        raise UserError(f"--target-student {args.target_student}: not a --student name"
                        + (f" (they are {', '.join(names[1:])})" if students else " (give the student with --student)"))
    if any(e.startswith("ct2-") for e in engines):
        require_ctranslate2()
        for e in engines:
            if e.startswith("ct2-"):
                check_quantization(e[4:])
    test = ParallelData.load(args.data, args.split)  # a UserError for a missing directory or split
    if not len(test):
        raise UserError(f"--data {args.data}: the {args.split} split is empty")
    data_vocab = Vocabulary.load(args.data)
    models = []
    for name, folder in [(TEACHER, args.teacher)] + students:
        model_dir = resolve_model_dir(Path(folder))  # one line for a folder that is not a model, or an export
        option = ("teacher", folder) if name == TEACHER else ("student", f"{name}={folder}")
        check_same_vocabulary(Vocabulary.load(model_dir), data_vocab, *option, args.data)
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))  # read by resolve_model_dir
        limit = int(config.get("max_position_embeddings", 512)) - 1
        if args.force_length is not None and args.force_length > limit:
            raise UserError(f"--force-length {args.force_length}: {name} ({model_dir}) has {limit + 1} positions; "
                            f"give at most {limit}")
        models.append((name, model_dir))
    check_writable_parent(Path(args.out))
    return models, beams, threads, engines


def run(args, command: str, log=print) -> dict:
    """Measure every model x engine x threads (each in a fresh process) and write the report; returns it."""
    models, beams, threads, engines = check(args)
    report = {"command": command, "commit": commit(), "date": now(), "hardware": hardware(threads),
              "note": args.note, "teacher": TEACHER, "target_student": args.target_student,
              "settings": {"data": str(args.data), "split": args.split, "engines": engines, "beams": beams,
                           "threads": threads, "force_length": args.force_length, "max_tokens": args.max_tokens,
                           "latency_sentences": args.latency_sentences, "sentences": args.sentences,
                           "repeats": args.repeats, "translators": args.translators,
                           "shortlist": {"top_n": args.top_n, "frequent": args.frequent} if args.shortlist else None}}
    rows = []
    with tempfile.TemporaryDirectory(prefix="a2d-speed-") as tmp:
        for name, model_dir in models:
            folders, sizes = {"hf-fp32": model_dir}, {}  # sizes: (engine, shortlist) -> (weights, folder) bytes
            for engine in engines:
                folder = folders.setdefault(engine, Path(tmp) / f"{len(rows)}-{engine}")
                if engine.startswith("ct2-"):
                    export(model_dir, folder, quantization=engine[4:], log=lambda *a: None)
                sizes[engine, False] = folder_size(folder, weights_only=True), folder_size(folder)
                if args.shortlist and engine.startswith("ct2-"):
                    write_shortlist(args.data, folder, top_n=args.top_n, frequent=args.frequent, log=lambda *a: None)
                    sizes[engine, True] = sizes[engine, False][0], folder_size(folder)
            # each engine on each thread count; with --translators, a ct2 engine on N > 1 threads as N translators too
            ways = [(engine, shortlist, n, parallel) for engine, shortlist in sizes for n in threads
                    for parallel in ((False, True) if args.translators and engine.startswith("ct2-") and n > 1
                                     else (False,))]
            for engine, shortlist, n, translators in ways:
                with_what = (SHORTLIST if shortlist else "") + (TRANSLATORS if translators else "")
                log(f"{name} {engine}{with_what} {n} thread(s) ...")
                r = in_fresh_process(engine, str(folders[engine]), str(args.data), args.split, n, beams,
                                     args.max_tokens, args.latency_sentences, args.force_length, args.sentences,
                                     shortlist, args.repeats, translators)
                r.update(model=name, folder=str(model_dir) if engine == "hf-fp32" else f"a2d export of {model_dir}",
                         weights_bytes=sizes[engine, shortlist][0], folder_bytes=sizes[engine, shortlist][1])
                rows.append(r)
                log("  " + "; ".join(f"beam {k[4:]} {v['tokens_per_s']:,.0f} tok/s BLEU {v['bleu']:.2f}"
                                     for k, v in r["runs"].items()))
    report["hardware"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["results"] = rows
    report["targets"] = targets(rows, args.target_student, forced=args.force_length is not None)
    out = Path(args.out)
    md = markdown(report, [name for name, _ in models])
    plot(rows, out.with_name(out.name + ".png"), beam=TARGET_BEAM if TARGET_BEAM in beams else max(beams),
         threads=min(threads), forced=args.force_length)
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(report, indent=2) + "\n")
    atomic_write_text(out.with_name(out.name + ".md"), md)
    log(md)
    return report


def _option(name: str, *value) -> str:
    """A component's parameter as this script's options write it: ``--name value`` (a switch without its value)."""
    flag = "--" + name.replace("_", "-")
    return flag if not value or value[0] is True else f"{flag} {value[0]}"


def _message(e: UserError) -> str:
    """The error in this script's terms: a component's refused parameter (:class:`a2d.errors.BadValue`) as an option."""
    return e.describe(_option, " ") if isinstance(e, BadValue) else str(e)


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        run(args, command or " ".join(["python", Path(sys.argv[0]).as_posix()] + (sys.argv[1:] if argv is None
                                                                                    else list(argv))))
    except UserError as e:
        print(f"speed: error: {_message(e)}", file=sys.stderr)
        return 2
    return 0


__all__ = ["measure", "in_fresh_process", "targets", "target_lines", "table", "plot", "parser", "check", "run",
           "main", "ENGINES"]
