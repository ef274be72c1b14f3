"""Sequence-KD data by each engine: ``a2d distill-data --engine E`` on one teacher and data directory, timed.

For every engine (``hf``, ``ct2-float32``, ``ct2-int8``), in a fresh ``a2d distill-data`` process with ``--threads``
threads: the wall time of the command (loading, the on-the-fly CTranslate2 export, decoding, writing), the decoding
time and the decoder steps it records in its ``meta.json`` (target tokens, ``</s>`` included), tokens/s, and the
BLEU/chrF (sacreBLEU) of its targets against the corpus references and against the ``hf`` engine's targets (the
first engine given is the reference engine). Writes PREFIX.json and PREFIX.md.

    python benchmarks/seqkd_engines.py --teacher benchmarks/results/quality-tiny-r3-teachers/de-en \\
        --data /tmp/d500 --out benchmarks/results/seqkd-engines-tiny-r3-cpu
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from a2d.data.prepare import ParallelData, load_meta
from a2d.evaluate import score
from a2d.provenance import commit, hardware, now
from a2d.recipes.distill_data import ENGINES
from a2d.utils import atomic_write_text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True, help="prepared data directory (its train sources are translated)")
    p.add_argument("--out", required=True, help="output prefix: PREFIX.json, PREFIX.md")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--note", default="")
    args = p.parse_args(argv)

    meta = load_meta(args.data)
    train = ParallelData.load(args.data, "train")
    report = {"command": " ".join(["python", Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "commit": commit(),
              "date": now(), "machine": hardware(), "cores": os.cpu_count(), "note": args.note,
              "teacher": args.teacher, "data": str(args.data), "sentences": len(train), "beam": args.beam,
              "threads": args.threads, "load_average_before": [round(x, 2) for x in os.getloadavg()], "engines": []}
    targets = {}
    with tempfile.TemporaryDirectory(prefix="a2d-seqkd-engines-") as tmp:
        for engine in args.engines:
            out = Path(tmp) / engine
            cmd = [sys.executable, "-m", "a2d.cli", "distill-data", "--teacher", args.teacher, "--data", args.data,
                   "--out", str(out), "--beam", str(args.beam), "--engine", engine, "--threads", str(args.threads)]
            load = [round(x, 2) for x in os.getloadavg()]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            made = load_meta(out)["distilled_from"]
            targets[engine] = (out / f"train.{meta['tgt']}").read_text(encoding="utf-8").splitlines()
            if len(targets[engine]) != len(train):
                raise SystemExit(f"{engine}: {len(train) - len(targets[engine])} pairs dropped as too long; the "
                                 "targets no longer line up with the references")
            row = {"engine": engine, "wall_seconds": round(wall, 2), "decode_seconds": made["decode_seconds"],
                   "decoder_steps": made["decoder_steps"],
                   "tokens_per_s": round(made["decoder_steps"] / made["decode_seconds"], 1),
                   "wall_tokens_per_s": round(made["decoder_steps"] / wall, 1), "load_average_at_start": load}
            refs = score(targets[engine], train.tgt_text, n_bootstrap=1, tgt_lang=meta["tgt"])
            row.update(bleu_vs_references=round(refs["bleu"], 2), chrf_vs_references=round(refs["chrf"], 2))
            base = targets[args.engines[0]]
            if len(base) == len(targets[engine]):
                same = score(targets[engine], base, n_bootstrap=1, tgt_lang=meta["tgt"])
                row.update(bleu_vs_first_engine=round(same["bleu"], 2),
                           identical_lines=sum(a == b for a, b in zip(targets[engine], base)))
            report["engines"].append(row)
            print(json.dumps(row), flush=True)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    first = report["engines"][0]
    for row in report["engines"]:
        row["speedup_vs_first_engine"] = round(row["tokens_per_s"] / first["tokens_per_s"], 2)
        row["wall_speedup_vs_first_engine"] = round(first["wall_seconds"] / row["wall_seconds"], 2)
    out = Path(args.out)
    atomic_write_text(out.with_name(out.name + ".json"), json.dumps(report, indent=2) + "\n")
    lines = [f"# Sequence-KD data by engine: {report['sentences']} train sentences, beam {args.beam}", "",
             f"`{report['command']}`", "",
             f"commit {report['commit']}, {report['date']}; {report['machine']}, {report['cores']} cores, "
             f"{args.threads} thread(s) per engine; load average before {report['load_average_before']}, after "
             f"{report['load_average_after']}" + (f"; {args.note}" if args.note else ""), "",
             f"Teacher `{args.teacher}`. Tokens are decoder steps (output ids through </s>) as `a2d distill-data` "
             "records them in meta.json; decode s is the chunks' decoding, wall s the whole command (loading, the "
             f"CTranslate2 export, writing). BLEU vs {args.engines[0]}: its targets taken as the references.", "",
             f"| engine | decode s | tokens | tokens/s | x {args.engines[0]} | wall s | x {args.engines[0]} (wall) | "
             f"BLEU vs references | chrF vs references | BLEU vs {args.engines[0]} | identical lines |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["engines"]:
        lines.append(f"| {r['engine']} | {r['decode_seconds']:.1f} | {r['decoder_steps']:,} | {r['tokens_per_s']:,.0f} | "
                     f"{r['speedup_vs_first_engine']:.2f} | {r['wall_seconds']:.1f} | "
                     f"{r['wall_speedup_vs_first_engine']:.2f} | {r['bleu_vs_references']:.2f} | "
                     f"{r['chrf_vs_references']:.2f} | {r.get('bleu_vs_first_engine', float('nan')):.2f} | "
                     f"{r.get('identical_lines', '')}/{report['sentences']} |")
    atomic_write_text(out.with_name(out.name + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
