"""Training throughput: target tokens per second of one update, plain training vs. distillation methods.

Runs real updates (forward, backward, AdamW step) on real Multi30k batches built by the same
batching code as the recipes, after a few warm-up updates, and reports the median over the timed
updates. Ratios measured in one run are what to compare; absolute numbers depend on the machine.

    python benchmarks/throughput.py --data runs/m30k-de-en --teacher tiny-teacher --student tiny-student \
        --methods none kd a2d --steps 20 --out benchmarks/results/throughput-tiny

Writes OUT.json and OUT.md (hardware, commit, command).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from a2d.config import load_config
from a2d.provenance import git_commit, hardware
from a2d.data.batching import collate, token_batches
from a2d.data.prepare import ParallelData
from a2d.data.vocab import Vocabulary
from a2d.losses import label_smoothed_ce
from a2d.methods import ATTENTIONS, HIDDEN_STATES, Progress, get_method
from a2d.models import build_model, use_attention_maps
from a2d.training import make_optimizer, model_inputs, to_device
from a2d.utils import atomic_write_text


def measure(method_name: str, teacher_preset: str, student_preset: str, data, vocab, device, steps: int,
            warmup: int, max_tokens: int) -> dict:
    teacher_cfg = load_config(teacher_preset, [f"max_tokens={max_tokens}"])
    cfg = load_config(student_preset, [f"max_tokens={max_tokens}", f"method={method_name}"])
    method_cls = get_method(method_name)
    student = build_model(cfg, len(vocab), seed=1).to(device)
    teacher = None
    if method_cls.needs_teacher:
        teacher = build_model(teacher_cfg, len(vocab), seed=2).to(device).eval().requires_grad_(False)
    method = method_cls(cfg, student.config, teacher.config if teacher is not None else None).to(device)
    method.attach(student, teacher)
    if ATTENTIONS in method.needs:
        use_attention_maps(student)
        if teacher is not None:
            use_attention_maps(teacher)
    params = [{"params": list(student.parameters())}]
    if list(method.parameters()):
        params.append({"params": list(method.parameters())})
    optimizer = make_optimizer(cfg, params)
    batches = token_batches(data.src_lens, data.tgt_lens, max_tokens, shuffle=True, seed=1, epoch=1)
    wants = {"output_attentions": ATTENTIONS in method.needs, "output_hidden_states": HIDDEN_STATES in method.needs}
    rates = []
    for i, idx in enumerate(batches[: warmup + steps]):
        batch = to_device(collate([data[j] for j in idx]), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            teacher_out = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher(**model_inputs(batch), **wants)
            student_out = student(**model_inputs(batch), **wants)
        ce = label_smoothed_ce(student_out.logits, batch["labels"], cfg.label_smoothing)
        progress = Progress(epoch=1, update=i, updates_per_epoch=len(batches))
        terms = method.loss_terms(batch, student_out, teacher_out, progress)
        weights = method.weights(progress)
        loss = ce + sum(weights[k] * terms[k] for k in terms if weights.get(k, 0.0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            rates.append(int(batch["ntokens"]) / (time.perf_counter() - start))
    return {"method": method_name, "teacher": teacher_preset if teacher is not None else None,
            "student": student_preset, "tokens_per_s": statistics.median(rates), "updates_timed": len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--teacher", default="tiny-teacher")
    parser.add_argument("--student", default="tiny-student")
    parser.add_argument("--methods", nargs="+", default=["none", "kd", "a2d"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--out", required=True, help="path prefix for .json and .md")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = ParallelData.load(args.data, "train")
    vocab = Vocabulary.load(args.data)
    rows = [{**measure("none", args.teacher, args.teacher, data, vocab, device, args.steps, args.warmup,
                       args.max_tokens), "method": "(teacher training)"}]
    for name in args.methods:
        rows.append(measure(name, args.teacher, args.student, data, vocab, device, args.steps, args.warmup,
                            args.max_tokens))
        print(f"{name}: {rows[-1]['tokens_per_s']:,.0f} target tokens/s", flush=True)
    base = next(r["tokens_per_s"] for r in rows if r["method"] == "none") if "none" in args.methods else None
    info = {"hardware": hardware(), "commit": git_commit(), "torch": torch.__version__,
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "max_tokens": args.max_tokens,
            "rows": rows}
    lines = [f"Training throughput, {info['hardware']}, commit {info['commit']}, max_tokens {args.max_tokens}",
             f"`{info['command']}`", "", "| run | model trained | teacher | target tokens/s | vs. No KD |",
             "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['method']} | {r['student']} | {r['teacher'] or '-'} | {r['tokens_per_s']:,.0f} | {ratio} |")
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
