"""Training throughput: each method's step against its bound (one student step + one teacher forward pass).

Times the recipes' own steps (``train_step``, ``distill_step``) with backward and optimizer step, on
real Multi30k batches (the recipes' batching), interleaved in rounds; see ``a2d.experiments.throughput``.

    python benchmarks/throughput.py --data runs/m30k-de-en --methods kd a2d --batches 12 --rounds 3 \
        --profile a2d --out benchmarks/results/throughput-tiny-cpu

Writes OUT.json and OUT.md (hardware, commit, command, and the profiler's top entries with --profile).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from a2d.allocator import keep_large_allocations
from a2d.data.vocab import Vocabulary
from a2d.experiments import throughput as tp
from a2d.provenance import git_commit, hardware
from a2d.utils import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared data directory (a2d prepare)")
    parser.add_argument("--teacher", default="tiny-teacher", help="teacher preset (random weights: speed only)")
    parser.add_argument("--student", default="tiny-student")
    parser.add_argument("--methods", nargs="+", default=["kd", "a2d"])
    parser.add_argument("--batches", type=int, default=12, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                        help="the recipes' precision setting (auto: bf16 on a capable GPU, fp32 on a CPU)")
    parser.add_argument("--profile", nargs="*", default=[], metavar="RUN", help="also profile these methods")
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = [f"max_tokens={args.max_tokens}", f"precision={args.precision}"]
    batches, per_epoch = tp.load_batches(Path(args.data), args.max_tokens, args.warmup + args.batches, device)
    vocab_size = len(Vocabulary.load(args.data))
    variants = [tp.student_step_variant(args.student, overrides, vocab_size, device),
                tp.teacher_forward_variant(args.teacher, overrides, vocab_size, device)]
    variants += [tp.method_variant(m, args.teacher, args.student, overrides, vocab_size, device, per_epoch)
                 for m in args.methods]
    tp.measure(variants, batches, args.warmup, args.rounds, device)
    tokens = sum(int(b["ntokens"]) for b in batches[args.warmup:])
    info = {"hardware": hardware(), "commit": git_commit(), "torch": torch.__version__,
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "max_tokens": args.max_tokens,
            "precision": args.precision,
            "batches": args.batches, "tokens": tokens, "rounds": args.rounds,
            "memory": "GPU peak allocation" if device.type == "cuda" else "CPU peak resident set",
            "rows": tp.rows(variants, tokens),
            "allocator": "large blocks kept in the heap (a2d.allocator)" if keep_large_allocations()
            else "the C library's default"}
    by_name = {v.name: v for v in variants}
    info["profiles"] = {name: tp.profile(by_name[name], batches[args.warmup:], device) for name in args.profile}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), tp.markdown(info))
    print(tp.markdown(info))


if __name__ == "__main__":
    main()
