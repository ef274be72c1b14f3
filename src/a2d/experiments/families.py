"""The other families' stand-in measurements (issue 38): a teacher and its students scored on one split, with
confidence intervals and paired significance tests, written as JSON and markdown.

* classification: accuracy (and F1 / Matthews correlation), 95% bootstrap CI over examples; paired test of two
  students: approximate randomisation over examples (swap each example's two outcomes with probability 1/2;
  the p-value of the observed accuracy difference, two-sided).
* language modelling: perplexity, 95% bootstrap CI over sentences; paired test over sentences on their summed NLL
  (the same randomisation, on the per-sentence NLL difference).

Generation samples (a causal LM's ``generate``, greedy) come from transformers alone, on the saved folders.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from a2d.provenance import commit, hardware, now
from a2d.recipes.task import evaluate_task
from a2d.rundir import RunDir, resolve_model_dir
from a2d.utils import atomic_write_text

N_RESAMPLES = 10000


def paired_randomisation(a: np.ndarray, b: np.ndarray, n: int = N_RESAMPLES, seed: int = 12345) -> float:
    """Two-sided p-value that the mean of ``a - b`` (per-item scores of two systems on the same items) is 0:
    each item's pair is swapped with probability 1/2 (``(1 + #|mean| >= observed) / (1 + n)``)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    observed = abs(d.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(n, len(d)))
    extreme = int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    return (1 + extreme) / (1 + n)


def bootstrap_ci(stat, *columns: np.ndarray, n: int = 1000, seed: int = 12345) -> tuple[float, float]:
    """95% percentile interval of ``stat(*columns resampled over items)``."""
    rng = np.random.default_rng(seed)
    size = len(columns[0])
    values = [stat(*(c[idx] for c in columns)) for idx in (rng.integers(0, size, size) for _ in range(n))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def item_scores(result: dict) -> np.ndarray:
    """What the paired test compares per item: 1/0 correct (classification) or minus the sentence's NLL (lm)."""
    rows = result["rows"]
    if "prediction" in rows:
        return (np.array(rows["prediction"]) == np.array(rows["label"])).astype(np.float64)
    return -np.array(rows["nll"], dtype=np.float64)


def summary(result: dict) -> dict:
    rows = result["rows"]
    if "prediction" in rows:
        correct = item_scores(result)
        lo, hi = bootstrap_ci(lambda c: 100 * c.mean(), correct)
        return {"metric": "accuracy", "value": result["accuracy"], "ci": [lo, hi], "f1": result.get("f1"),
                "mcc": result.get("mcc")}
    nll, tokens = np.array(rows["nll"]), np.array(rows["tokens"], dtype=np.float64)
    lo, hi = bootstrap_ci(lambda a, b: math.exp(a.sum() / b.sum()), nll, tokens)
    return {"metric": "perplexity", "value": result["perplexity"], "ci": [lo, hi]}


def samples(model_dir: Path, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
    """Greedy continuations of ``prompts`` by a causal LM folder, through transformers' ``generate`` alone."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            enc = tok(tok.bos_token + prompt, return_tensors="pt")
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            out.append(prompt + tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def family_report(title: str, data_dir: Path, runs: dict[str, Path], comparisons: list[tuple[str, str]], out: Path,
                  split: str = "test", commands: list[str] = (), prompts: list[str] = (), note: str = "",
                  log=print) -> dict:
    """Score every run of ``runs`` (label -> run folder) on ``split``, test each ``(system, baseline)`` pair, and
    write ``out.json`` and ``out.md``."""
    results, rows = {}, {}
    for label, run in runs.items():
        result = evaluate_task(run, data_dir, split=split)
        state = RunDir(run).state()
        results[label] = result
        rows[label] = {**summary(result), "run": str(run), "best_epoch": state.best_epoch if state else None,
                       "epochs": (state.epoch - 1) if state else None, "updates": state.update if state else None}
        log(f"{label}: {rows[label]['metric']} {rows[label]['value']:.2f}")
    tests = []
    for system, baseline in comparisons:
        if system in results and baseline in results:
            a, b = item_scores(results[system]), item_scores(results[baseline])
            diff = rows[system]["value"] - rows[baseline]["value"]
            tests.append({"system": system, "baseline": baseline, "difference": diff,
                          "p": paired_randomisation(a, b), "items": len(a)})
    generated = {}
    if prompts:
        for label, run in runs.items():
            generated[label] = samples(resolve_model_dir(run, ("gpt2", "llama")), list(prompts))
    record = {"title": title, "data": str(data_dir), "split": split, "systems": rows, "tests": tests,
              "samples": generated, "commands": list(commands), "note": note, "commit": commit(), "hardware": hardware(),
              "time": now()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), render(record))
    return record


def render(record: dict) -> str:
    lines = [f"# {record['title']}", "",
             f"Split `{record['split']}` of `{record['data']}`; commit {record['commit']}; {record['hardware']}; "
             f"{record['time']}.", ""] + ([record["note"], ""] if record.get("note") else [])
    first = next(iter(record["systems"].values()))
    metric = first["metric"]
    extra = ["F1", "MCC"] if metric == "accuracy" else []
    lines += ["| system | " + " | ".join([metric, "95% CI", *extra, "best epoch / epochs"]) + " |",
              "|---|" + "---|" * (3 + len(extra))]
    for label, row in record["systems"].items():
        cells = [f"{row['value']:.2f}", f"{row['ci'][0]:.2f}-{row['ci'][1]:.2f}"]
        cells += [f"{row[k]:.2f}" if row.get(k) is not None else "-" for k in ("f1", "mcc")][:len(extra)]
        cells.append(f"{row['best_epoch']} / {row['epochs']}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if record["tests"]:
        better = "higher" if metric == "accuracy" else "lower"
        lines += ["", f"Paired approximate randomisation over {record['tests'][0]['items']} items "
                  f"({N_RESAMPLES} resamples; {metric}, {better} is better):", "",
                  "| system | baseline | difference | p |", "|---|---|---|---|"]
        for t in record["tests"]:
            lines.append(f"| {t['system']} | {t['baseline']} | {t['difference']:+.2f} | {t['p']:.4f} |")
    if record["samples"]:
        lines += ["", "Greedy continuations through transformers' `generate` (the saved folders alone):", ""]
        for label, texts in record["samples"].items():
            lines += [f"- {label}: " + " / ".join(f"“{t}”" for t in texts)]
    if record["commands"]:
        lines += ["", "Commands:", "", "```", *record["commands"], "```"]
    return "\n".join(lines) + "\n"


__all__ = ["family_report", "paired_randomisation", "bootstrap_ci", "render"]
