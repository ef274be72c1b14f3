"""Peak memory of the recipes' steps: a student training step (No KD) against distillation steps, one fresh
process per run.

Each run builds what its recipe builds (the student from a preset at the data's vocabulary, the teacher loaded
from a model folder, a Hugging Face Marian one included, frozen; the method with its modules; AdamW), then does
``--updates`` updates with the recipe's own step (:func:`a2d.recipes.train.train_step`,
:func:`a2d.recipes.distill.distill_step`), backward, clipping and optimizer step, on the epoch's batches with the
most target positions (the worst case at this ``max_tokens``). Memory, on a CPU:

* the process's peak resident set during the updates (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``
  once everything is built and the teacher's weights are paged in), and what was resident before them;
* the peak of the live tensors the updates make (every storage an operation returns, counted until it is freed,
  by a ``TorchDispatchMode``): what the steps hold, without what the C library's heap keeps or fragments.

On a GPU, the peak allocation. The heap is set up as the ``a2d`` command sets it (:mod:`a2d.allocator`, large
blocks kept: the resident set then varies from one process to the next by up to a (tokens x V) tensor, so
``--repeat`` runs each one several times, and ``--no-live`` leaves out the count of live tensors, which moves it)
unless ``A2D_MALLOC=default`` (large blocks mapped and returned: reproducible to 0.01 GiB).

    python benchmarks/memory.py --data DATA --teacher TEACHER_FOLDER --student deploy-student \
        --runs student kd a2d --updates 3 --max-tokens 4096 --out benchmarks/results/memory-58k-cpu

Writes OUT.json and OUT.md. The code measured is the ``a2d`` that Python imports (``PYTHONPATH=OLD/src`` measures
an older tree; ``--commit`` names it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import a2d
from a2d.allocator import keep_large_allocations
from a2d.data.batching import collate, token_batches
from a2d.data.prepare import ParallelData
from a2d.data.vocab import Vocabulary
from a2d.methods import ATTENTIONS, Progress, get_method
from a2d.models import build_model, use_attention_maps
from a2d.provenance import git_commit, hardware
from a2d.recipes.distill import distill_step, load_teacher
from a2d.recipes.train import train_step
from a2d.settings import load_config
from a2d.tokenizer import collate_ids
from a2d.training import make_optimizer, to_device
from a2d.utils import peak_rss_bytes, reset_peak_rss

STUDENT = "student"  # the run that is a student training step, not a method


class LiveTensors(TorchDispatchMode):
    """Bytes of the CPU storages that operations return while it is active, each counted until it is freed; ``peak``."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.seen: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key, nbytes = id(storage), storage.nbytes()
                if nbytes and key not in self.seen:
                    self.seen.add(key)
                    weakref.finalize(storage, self._freed, key, nbytes)
                    self.current += nbytes
                    self.peak = max(self.peak, self.current)
        return out


def measure_one(args) -> dict:
    """One run, in this process: build, update ``args.updates`` times, return the numbers."""
    heap = keep_large_allocations()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = Path(args.data)
    data, vocab = ParallelData.load(data_dir, "train"), Vocabulary.load(data_dir)
    order = token_batches(data.src_lens, data.tgt_lens, args.max_tokens, shuffle=True, seed=1, epoch=1)
    ids = collate_ids(vocab)
    # the epoch's batches with the most padded target positions (labels are B x T)
    sizes = [len(idx) * (max(int(data.tgt_lens[j]) for j in idx) + 1) for idx in order]
    chosen = sorted(range(len(order)), key=lambda i: -sizes[i])[:args.updates]
    batches = [to_device(collate([data[j] for j in order[i]], **ids), device) for i in chosen]

    overrides = [f"max_tokens={args.max_tokens}"]
    if args.run == STUDENT:
        cfg = load_config(args.student, overrides)
        student, teacher, method = build_model(cfg, len(vocab), seed=1, layout=vocab.layout), None, None
    else:
        cfg = load_config(args.student, [*overrides, f"method={args.run}"])
        method_cls = get_method(args.run)
        student = build_model(cfg, len(vocab), seed=1, layout=vocab.layout)
        teacher = load_teacher(Path(args.teacher), vocab, data_dir) if method_cls.needs_teacher else None
        method = method_cls(cfg.settings, student.config, teacher.config if teacher is not None else None)
        method.attach(student, teacher)
        if ATTENTIONS in method.needs:  # as the recipe does
            use_attention_maps(student)
            if teacher is not None:
                use_attention_maps(teacher)
        method.to(device)
        if teacher is not None:
            teacher.to(device)
            with torch.no_grad():  # its weights may be mapped from the file: resident before the updates
                sum(float(t.float().sum()) for t in [*teacher.parameters(), *teacher.buffers()])
    student.to(device).train()
    groups = [{"params": [p for p in student.parameters() if p.requires_grad]}]
    extra = [p for p in method.parameters() if p.requires_grad] if method is not None else []
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr": cfg.aam_lr or cfg.lr})
    optimizer = make_optimizer(cfg, groups)
    params = [p for g in groups for p in g["params"]]

    torch.manual_seed(0)
    losses = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        ready = torch.cuda.memory_allocated(device)
    else:
        reset_peak_rss()  # the peak := the memory resident now
        ready = peak_rss_bytes()
    live = LiveTensors() if device.type == "cpu" and args.live else None
    for i, batch in enumerate(batches):
        with live if live is not None else contextlib.nullcontext():
            if method is None:
                terms = train_step(student, batch, cfg)
            else:
                terms, _ = distill_step(student, teacher, method, batch, cfg,
                                        Progress(epoch=1, update=i, updates_per_epoch=len(order)))
            terms["loss"].backward()
            if cfg.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append({k: round(float(v.detach()), 6) for k, v in terms.items()})
            del terms
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()

    return {"run": args.run, "peak_bytes": peak, "ready_bytes": ready, "step_bytes": peak - ready,
            "live_peak_bytes": live.peak if live is not None else None,
            "target_positions": [int(b["labels"].numel()) for b in batches],
            "target_tokens": [int(b["ntokens"]) for b in batches], "vocab": len(vocab), "losses": losses,
            "heap": "a2d.allocator (large blocks kept)" if heap else "the C library's default",
            "memory": "GPU peak allocation" if device.type == "cuda" else "CPU peak resident set (VmHWM)",
            "a2d": str(Path(a2d.__file__).parent)}


def _gib(values: list[int]) -> str:
    """Median GiB, with the range when the repeats differ."""
    med = statistics.median(values) / 2 ** 30
    if len(values) == 1 or max(values) - min(values) < 2 ** 30 / 100:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values) / 2 ** 30:.2f}-{max(values) / 2 ** 30:.2f})"


def markdown(info: dict) -> str:
    repeat = info.get("repeat", 1)
    lines = [f"Peak memory, {info['hardware']}, code {info['commit']}, torch {info['torch']}, vocabulary "
             f"{info['vocab']:,}, max_tokens {info['max_tokens']}, {info['updates']} updates on the epoch's "
             f"largest batches ({', '.join(str(n) for n in info['target_positions'])} target positions), "
             f"heap: {info['heap']}" + (f", {repeat} processes per run (median, range)" if repeat > 1 else ""),
             "", f"`{info['command']}`", "",
             "| run | peak resident, GiB | vs. student step | resident before the updates, GiB | "
             "live tensors' peak during the updates, GiB | before + live, vs. student step |",
             "|---|---|---|---|---|---|"]
    rows = info["rows"]
    base = next((r for r in rows if r["run"] == STUDENT), None)

    def total(r):
        return statistics.median(r["ready_bytes"]) + statistics.median(r["live_peak_bytes"])

    counted = base is not None and base["live_peak_bytes"][0] is not None

    for r in rows:
        ratio = f"{statistics.median(r['peak_bytes']) / statistics.median(base['peak_bytes']):.2f}x" if base else "-"
        has_live = r["live_peak_bytes"][0] is not None
        live = _gib(r["live_peak_bytes"]) if has_live else "-"
        live_ratio = f"{total(r) / total(base):.2f}x" if counted and has_live else "-"
        lines.append(f"| {r['run']} | {_gib(r['peak_bytes'])} | {ratio} | {_gib(r['ready_bytes'])} | {live} | "
                     f"{live_ratio} |")
    lines += ["", f"Teacher: {info.get('teacher') or '-'}. First update's loss terms (the same code and seeds give "
              "the same values):", ""]
    lines += [f"- {r['run']}: " + ", ".join(f"{k} {v}" for k, v in r["losses"][0].items()) for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared data directory (a2d prepare)")
    parser.add_argument("--teacher", help="the teacher's model folder (a run, or a Hugging Face Marian folder)")
    parser.add_argument("--student", default="deploy-student", help="the student's preset")
    parser.add_argument("--runs", nargs="+", default=[STUDENT, "kd", "a2d"],
                        help=f"'{STUDENT}' (a training step, No KD) and/or method names")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (memory does not depend on them)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per run (median and range)")
    parser.add_argument("--no-live", dest="live", action="store_false",
                        help="do not count the live tensors (the count routes every operation through Python, which "
                             "moves what a kept heap keeps: the resident set of a2d's allocator is measured without it)")
    parser.add_argument("--commit", help="what to call the code measured (default: this checkout's commit)")
    parser.add_argument("--out", help="path prefix for .json and .md")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one run, JSON on stdout
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return
    if not args.out:
        parser.error("--out is required")
    rows = []
    for run in args.runs:
        cmd = [sys.executable, __file__, "--one", "--run", run, "--data", args.data, "--student", args.student,
               "--updates", str(args.updates), "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]
        if not args.live:
            cmd.append("--no-live")
        if args.teacher:
            cmd += ["--teacher", args.teacher]
        results = []
        for i in range(args.repeat):
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode:
                sys.exit(f"{run} failed:\n{out.stderr[-4000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            last = results[-1]
            print(f"{run} ({i + 1}/{args.repeat}): peak {last['peak_bytes'] / 2**30:.2f} GiB, before the updates "
                  f"{last['ready_bytes'] / 2**30:.2f} GiB; first update {last['losses'][0]}", flush=True)
        row = {k: v for k, v in results[0].items() if k not in ("peak_bytes", "ready_bytes", "step_bytes",
                                                                "live_peak_bytes")}
        for key in ("peak_bytes", "ready_bytes", "live_peak_bytes"):
            row[key] = [r[key] for r in results]
        rows.append(row)
    torch.set_num_threads(args.threads)
    first = rows[0]
    info = {"hardware": hardware(), "commit": args.commit or git_commit(str(Path(__file__).resolve().parents[1])),
            "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "max_tokens": args.max_tokens, "updates": args.updates, "repeat": args.repeat, "vocab": first["vocab"],
            "teacher": args.teacher,
            "target_positions": first["target_positions"], "memory": first["memory"], "heap": first["heap"],
            "a2d": first["a2d"], "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(info))
    print(markdown(info))


if __name__ == "__main__":
    main()
