"""Training throughput of the recipes' own steps, and the bound a distillation step cannot beat.

A distillation step computed on the fly costs at least one student training step plus one teacher
forward pass. Both are measured alone here, on the same batches as every method:

* ``student step``: :func:`a2d.recipes.train.train_step`, backward, optimizer step (No KD);
* ``teacher forward``: the teacher's forward pass alone, the cheapest one a logit-based method needs
  (no gradients, fast attention kernel, no maps);
* each method: :func:`a2d.recipes.distill.distill_step`, backward, optimizer step, exactly what
  ``a2d distill`` runs per batch.

``bound = student step + teacher forward`` (seconds over the same batches); a method's distance to it is
``its seconds / bound - 1``. The variants are timed in rounds, one after the other within each round,
so that a machine's drift hits all of them alike; each variant's figure is the median over rounds of
its total seconds over the batches. Peak memory is the GPU's peak allocation, or on a CPU the peak
resident set of the process during the variant's updates (Linux: reset through
``/proc/self/clear_refs``), which includes every variant's models (a few MiB for the tiny presets).
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from a2d.allocator import keep_large_allocations
from a2d.data.batching import collate, token_batches
from a2d.data.prepare import ParallelData
from a2d.data.vocab import Vocabulary
from a2d.methods import ATTENTIONS, Progress, get_method
from a2d.models import build_model, use_attention_maps
from a2d.recipes.distill import distill_step
from a2d.recipes.train import train_step
from a2d.settings import load_config
from a2d.tokenizer import collate_ids
from a2d.training import make_optimizer, model_inputs, resolve_precision, to_device
from a2d.utils import peak_rss_bytes, reset_peak_rss

STUDENT_STEP, TEACHER_FORWARD = "student step", "teacher forward"


@dataclass
class Variant:
    """One thing timed: ``run(batch, i)`` does one update (or one forward pass) on ``batch``."""

    name: str
    run: object
    model: str
    teacher: str | None = None
    seconds: list[float] = field(default_factory=list)  # per round: total over the batches
    peak_bytes: int = 0


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak_read(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, precision: str = "auto"):
    """The autocast the recipes run under at ``precision`` (:func:`a2d.training.resolve_precision`)."""
    precision = resolve_precision(precision)
    if precision == "no":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _update(optimizer, loss: torch.Tensor, params, clip_norm: float) -> None:
    loss.backward()
    if clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def student_step_variant(preset: str, overrides: list[str], vocab_size: int, device) -> Variant:
    cfg = load_config(preset, overrides)
    model = build_model(cfg, vocab_size, seed=1).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, [{"params": params}])
    autocast = _autocast(device, cfg.precision)

    def run(batch, i):
        _update(optimizer, train_step(model, batch, cfg, autocast)["loss"], params, cfg.clip_norm)

    return Variant(STUDENT_STEP, run, preset)


def teacher_forward_variant(preset: str, overrides: list[str], vocab_size: int, device) -> Variant:
    cfg = load_config(preset, overrides)
    teacher = build_model(cfg, vocab_size, seed=2).to(device).eval().requires_grad_(False)
    autocast = _autocast(device, cfg.precision)

    def run(batch, i):
        with torch.inference_mode(), autocast():
            teacher(**model_inputs(batch)).logits.sum().item()  # .item(): the pass is finished when timed

    return Variant(TEACHER_FORWARD, run, preset)


def method_variant(method_name: str, teacher_preset: str, student_preset: str, overrides: list[str],
                   vocab_size: int, device, updates_per_epoch: int) -> Variant:
    cfg = load_config(student_preset, [*overrides, f"method={method_name}"])
    method_cls = get_method(method_name)
    student = build_model(cfg, vocab_size, seed=1).to(device).train()
    teacher = None
    if method_cls.needs_teacher:
        teacher = build_model(load_config(teacher_preset, overrides), vocab_size, seed=2)
        teacher = teacher.to(device).eval().requires_grad_(False)
    method = method_cls(cfg.settings, student.config, teacher.config if teacher is not None else None).to(device)
    method.attach(student, teacher)
    if ATTENTIONS in method.needs:  # as the recipe does
        use_attention_maps(student)
        if teacher is not None:
            use_attention_maps(teacher)
    groups = [{"params": [p for p in student.parameters() if p.requires_grad]}]
    extra = [p for p in method.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr": cfg.aam_lr or cfg.lr})
    optimizer = make_optimizer(cfg, groups)
    params = [p for g in groups for p in g["params"]]
    autocast = _autocast(device, cfg.precision)

    def run(batch, i):
        progress = Progress(epoch=1, update=i, updates_per_epoch=updates_per_epoch)
        terms, _ = distill_step(student, teacher, method, batch, cfg, progress, autocast)
        _update(optimizer, terms["loss"], params, cfg.clip_norm)

    return Variant(method_name, run, student_preset, teacher_preset if teacher is not None else None)


def load_batches(data_dir: Path, max_tokens: int, count: int, device) -> tuple[list[dict], int]:
    """The first ``count`` training batches of epoch 1 (the recipes' batching, seed 1), and the epoch's length."""
    data, vocab = ParallelData.load(data_dir, "train"), Vocabulary.load(data_dir)
    order = token_batches(data.src_lens, data.tgt_lens, max_tokens, shuffle=True, seed=1, epoch=1)
    ids = collate_ids(vocab)
    return [to_device(collate([data[j] for j in idx], **ids), device) for idx in order[:count]], len(order)


def measure(variants: list[Variant], batches: list[dict], warmup: int, rounds: int, device, log=print) -> None:
    """Time every variant over ``batches`` (after ``warmup`` untimed batches), ``rounds`` times, interleaved;
    with the allocator settings the recipes run with (``make_accelerator``: :mod:`a2d.allocator`)."""
    keep_large_allocations()
    timed = batches[warmup:]
    # one bar over every batch each variant runs; moved between timed passes, never inside one
    bar = tqdm(total=len(variants) * (min(warmup, len(batches)) + rounds * len(timed)), unit="batch",
               desc="throughput", leave=False, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for v in variants:
        for i, batch in enumerate(batches[:warmup]):
            v.run(batch, i)
            bar.update(1)
    for r in range(rounds):
        for v in variants if r % 2 == 0 else reversed(variants):  # alternate the order between rounds
            _sync(device)
            _peak_reset(device)
            start = time.perf_counter()
            for i, batch in enumerate(timed):
                v.run(batch, warmup + i)
            _sync(device)
            v.seconds.append(time.perf_counter() - start)
            v.peak_bytes = max(v.peak_bytes, _peak_read(device))
            bar.update(len(timed))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{v.name} {v.seconds[-1]:.2f} s" for v in variants))
    bar.close()


def rows(variants: list[Variant], tokens: int) -> list[dict]:
    """One row per variant: seconds (median over rounds), tokens/s, ratio to No KD, bound and distance to it."""
    seconds = {v.name: statistics.median(v.seconds) for v in variants}
    base = seconds.get("none", seconds.get(STUDENT_STEP))
    bound = (seconds[STUDENT_STEP] + seconds[TEACHER_FORWARD]
             if STUDENT_STEP in seconds and TEACHER_FORWARD in seconds else None)
    out = []
    for v in variants:
        s = seconds[v.name]
        is_method = v.name not in (STUDENT_STEP, TEACHER_FORWARD)
        with_teacher = is_method and v.teacher is not None
        out.append({
            "run": v.name, "model": v.model, "teacher": v.teacher, "seconds": s, "seconds_per_round": v.seconds,
            "tokens_per_s": tokens / s, "vs_no_kd": base / s if base else None,
            "bound_tokens_per_s": tokens / bound if with_teacher and bound else None,
            "over_bound": s / bound - 1 if with_teacher and bound else None,
            "peak_mib": v.peak_bytes / 2**20,
        })
    return out


def profile(variant: Variant, batches: list[dict], device, top: int = 20) -> str:
    """The PyTorch profiler's table (top ``top`` by self time) over ``variant`` on ``batches``."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for i, batch in enumerate(batches):
            variant.run(batch, i)
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=48)


def markdown(info: dict) -> str:
    lines = [f"Training throughput, {info['hardware']}, commit {info['commit']}, torch {info['torch']}, "
             f"max_tokens {info['max_tokens']}, {info['batches']} batches ({info['tokens']:,} target tokens) "
             f"x {info['rounds']} rounds, median"
             + (f", precision {info['precision']}" if "precision" in info else "")
             + (f", allocator: {info['allocator']}" if "allocator" in info else ""),
             "", f"`{info['command']}`", "",
             "| run | model | teacher | target tokens/s | vs. No KD | bound tokens/s | over the bound | peak memory |",
             "|---|---|---|---|---|---|---|---|"]
    for r in info["rows"]:
        ratio = f"{r['vs_no_kd']:.2f}x" if r["vs_no_kd"] else "-"
        bound = f"{r['bound_tokens_per_s']:,.0f}" if r["bound_tokens_per_s"] else "-"
        over = f"{100 * r['over_bound']:+.0f}%" if r["over_bound"] is not None else "-"
        lines.append(f"| {r['run']} | {r['model']} | {r['teacher'] or '-'} | {r['tokens_per_s']:,.0f} | {ratio} | "
                     f"{bound} | {over} | {r['peak_mib']:,.0f} MiB |")
    lines += ["", "bound = student step + teacher forward over the same batches; over the bound = seconds / bound - 1. "
              "Peak memory: " + ("GPU peak allocation." if "GPU" in info.get("memory", "") else
                                 "the process's peak resident set during the run's updates (all models resident).")]
    for name, table in info.get("profiles", {}).items():
        lines += ["", f"Profiler, `{name}`, top entries by self time:", "", "```", table.rstrip(), "```"]
    return "\n".join(lines) + "\n"


__all__ = ["Variant", "load_batches", "markdown", "measure", "method_variant", "profile", "rows",
           "student_step_variant", "teacher_forward_variant"]
