"""Speed, size and quality of a teacher and its students, in the terms of the WMT efficiency task.

For every model (the teacher and each student) and every engine (Hugging Face fp32; CTranslate2 float32 and
int8, exported with ``a2d export``), on the whole test split of a prepared data directory:

* throughput: target tokens/s and sentences/s, beam 5 and greedy, batched by source tokens (``--max-tokens``);
* latency: batch-1 translation time per sentence (p50, p90) over the first ``--latency-sentences``, beam 5;
* peak resident memory of the process that loaded the model and ran all of the above (one process per
  model and engine, so the peaks are not mixed);
* size on disk (the weights file, and the whole folder with its tokenizer);
* BLEU and chrF (sacreBLEU) of the very outputs that were timed.

Everything runs with ``--threads`` intra-op threads (torch and CTranslate2 alike; default 1). Ratios within one
run are what to read: the machine may be shared. Writes PREFIX.json, PREFIX.md and PREFIX.png (BLEU against
target tokens/s at beam 5, the Pareto view).

    python benchmarks/speed.py --data DATA --teacher T_DIR --student "KD=RUN" --student "A2D=RUN" \\
        --out benchmarks/results/speed-tiny-r3-cpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

ENGINES = ("hf-fp32", "ct2-float32", "ct2-int8")


def _load(engine: str, folder: str, threads: int):
    from a2d.translator import CT2Translator, HFTranslator

    if engine == "hf-fp32":
        import torch

        torch.set_num_threads(threads)
        return HFTranslator.load(folder, device="cpu")
    return CT2Translator(folder, threads=threads)


def measure(engine: str, folder: str, data: str, split: str, threads: int, max_tokens: int,
            latency_sentences: int) -> dict:
    """Run in a fresh process: load, time the test set (beam 5 and greedy), time batch-1 latency, score."""
    from a2d.data.prepare import ParallelData
    from a2d.evaluate import score

    os.environ["OMP_NUM_THREADS"] = str(threads)
    test = ParallelData.load(data, split)
    start = time.perf_counter()
    translator = _load(engine, folder, threads)
    result = {"engine": engine, "folder": folder, "load_seconds": round(time.perf_counter() - start, 3), "runs": {}}
    translator.translate(test.src_text[:20], beam=5, max_tokens=max_tokens)  # warm-up
    for beam in (5, 1):
        start = time.perf_counter()
        hyps = translator.translate(test.src_text, beam=beam, max_tokens=max_tokens)
        seconds = time.perf_counter() - start
        tokens = sum(len(ids) + 1 for ids in translator.vocab.encode_target_batch(hyps))  # target pieces + </s>
        s = score(hyps, test.tgt_text, n_bootstrap=1, tgt_lang=test.meta.get("tgt"))
        result["runs"][f"beam{beam}"] = {
            "seconds": round(seconds, 3), "sentences": len(hyps), "target_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "sentences_per_s": round(len(hyps) / seconds, 2),
            "bleu": round(s["bleu"], 2), "chrf": round(s["chrf"], 2), "signature": s["signature"]}
    times = []
    for text in test.src_text[:latency_sentences]:
        start = time.perf_counter()
        translator.translate([text], beam=5, max_tokens=max_tokens)
        times.append(time.perf_counter() - start)
    q = statistics.quantiles(times, n=10)
    result["latency_ms"] = {"p50": round(1000 * statistics.median(times), 2), "p90": round(1000 * q[8], 2),
                            "sentences": len(times), "beam": 5, "batch": 1}
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        return pool.submit(measure, *args).result()


def hardware(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import ctranslate2
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "ctranslate2": ctranslate2.__version__,
            "ct2_cpu_compute_types": sorted(ctranslate2.get_supported_compute_types("cpu")),
            "load_average_before": list(os.getloadavg())}


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(rows: list[dict]) -> str:
    head = ("| model | engine | beam-5 tok/s | beam-5 sent/s | BLEU (b5) | chrF (b5) | greedy tok/s | greedy sent/s | "
            "BLEU (greedy) | latency p50 / p90 ms (b5, batch 1) | peak RSS MiB | weights MiB | folder MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        b5, g = r["runs"]["beam5"], r["runs"]["beam1"]
        lines.append(f"| {r['model']} | {r['engine']} | {b5['tokens_per_s']:,.0f} | {b5['sentences_per_s']:.1f} | "
                     f"{b5['bleu']:.2f} | {b5['chrf']:.2f} | {g['tokens_per_s']:,.0f} | {g['sentences_per_s']:.1f} | "
                     f"{g['bleu']:.2f} | {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p90']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['weights_bytes'] / 2**20:.2f} | {r['folder_bytes'] / 2**20:.2f} |")
    return "\n".join(lines)


def targets(rows: list[dict], teacher: str) -> list[str]:
    """The issue's targets, each with its measured ratio."""
    by = {(r["model"], r["engine"]): r for r in rows}
    out = []
    t = by[(teacher, "hf-fp32")]["runs"]["beam5"]["tokens_per_s"]
    for model in dict.fromkeys(r["model"] for r in rows if r["model"] != teacher):
        hf, i8, f32 = by[(model, "hf-fp32")], by[(model, "ct2-int8")], by[(model, "ct2-float32")]
        speed = hf["runs"]["beam5"]["tokens_per_s"] / t
        ct2 = i8["runs"]["beam5"]["tokens_per_s"] / hf["runs"]["beam5"]["tokens_per_s"]
        dbleu = i8["runs"]["beam5"]["bleu"] - hf["runs"]["beam5"]["bleu"]
        size_w = i8["weights_bytes"] / f32["weights_bytes"]
        size_f = i8["folder_bytes"] / f32["folder_bytes"]
        out.append(f"- {model}: HF beam-5 tok/s {speed:.2f}x the teacher's (target >= 2x: {'met' if speed >= 2 else 'MISSED'}); "
                   f"CT2 int8 {ct2:.2f}x its HF fp32 at {dbleu:+.2f} BLEU (target >= 4x within 0.3: "
                   f"{'met' if ct2 >= 4 and abs(dbleu) <= 0.3 else 'MISSED'}); int8 size {size_w:.0%} of float32 "
                   f"(weights) / {size_f:.0%} (folder with tokenizer) (target <= 30%: "
                   f"{'met' if size_f <= 0.3 else 'met for the weights only' if size_w <= 0.3 else 'MISSED'})")
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from a2d.utils import atomic_savefig

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"hf-fp32": "o", "ct2-float32": "s", "ct2-int8": "^"}
    for engine in ENGINES:
        pts = [(r["runs"]["beam5"]["tokens_per_s"], r["runs"]["beam5"]["bleu"], r["model"]) for r in rows
               if r["engine"] == engine]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=markers[engine], label=engine)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("target tokens/s (beam 5, whole test set, log scale)")
    ax.set_ylabel("BLEU (the timed outputs)")
    ax.set_title("BLEU against speed (up and right is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared data directory (its test split is translated)")
    p.add_argument("--split", default="test")
    p.add_argument("--teacher", required=True, help="the teacher's model folder")
    p.add_argument("--student", action="append", default=[], metavar="NAME=RUN", help="a student (repeatable)")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.json, PREFIX.md, PREFIX.png")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=2000, help="source tokens per batch")
    p.add_argument("--latency-sentences", type=int, default=100)
    p.add_argument("--note", default="", help="a line recorded with the results (e.g. what else ran)")
    args = p.parse_args(argv)

    from a2d.export import export, folder_size
    from a2d.models import resolve_model_dir

    models = [("teacher", args.teacher)] + [tuple(s.split("=", 1)) for s in args.student]
    info = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "commit": commit(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hardware": hardware(args.threads),
            "note": args.note, "max_tokens": args.max_tokens}
    rows = []
    with tempfile.TemporaryDirectory(prefix="a2d-speed-") as tmp:
        for name, folder in models:
            folder = resolve_model_dir(folder)
            folders = {"hf-fp32": folder}
            for q in ("float32", "int8"):
                folders[f"ct2-{q}"] = Path(tmp) / f"{name}-{q}"
                export(folder, folders[f"ct2-{q}"], quantization=q, log=lambda *a: None)
            for engine in ENGINES:
                print(f"{name} {engine} ...", flush=True)
                r = _in_fresh_process(engine, str(folders[engine]), args.data, args.split, args.threads,
                                      args.max_tokens, args.latency_sentences)
                r.update(model=name, folder=str(folder) if engine == "hf-fp32" else f"a2d export of {folder}",
                         weights_bytes=folder_size(folders[engine], weights_only=True),
                         folder_bytes=folder_size(folders[engine]))
                rows.append(r)
                print(f"  beam5 {r['runs']['beam5']['tokens_per_s']:,.0f} tok/s BLEU {r['runs']['beam5']['bleu']:.2f}; "
                      f"greedy {r['runs']['beam1']['tokens_per_s']:,.0f} tok/s; p50 {r['latency_ms']['p50']} ms", flush=True)
    info["hardware"]["load_average_after"] = list(os.getloadavg())
    report = {**info, "results": rows, "targets": targets(rows, "teacher")}
    out = Path(args.out)
    from a2d.utils import atomic_write_text

    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    hw = info["hardware"]
    md = [f"# Speed, size and quality: {', '.join(n for n, _ in models)}", "",
          f"`{info['command']}`", "",
          f"commit {info['commit']}, {info['date']}; {hw['cpu']}, {hw['cores']} cores, {hw['threads']} thread(s); "
          f"torch {hw['torch']}, ctranslate2 {hw['ctranslate2']}; load average before {hw['load_average_before']}, "
          f"after {hw['load_average_after']}" + (f"; {info['note']}" if info["note"] else ""), "",
          f"Whole {args.split} split ({rows[0]['runs']['beam5']['sentences']} sentences), batches of at most "
          f"{args.max_tokens} source tokens; tokens are target pieces including </s>; BLEU/chrF are of the timed "
          "outputs; latency is one sentence at a time, beam 5, first "
          f"{rows[0]['latency_ms']['sentences']} sentences.", "", table(rows), "", "Targets:", "",
          *report["targets"], ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md))
    plot(rows, out.with_suffix(".png"))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
