"""Training curves: read runs' ``metrics.jsonl`` and plot loss and the validation score against updates (BLEU;
a classifier's accuracy, a language model's perplexity).

A run folder's ``metrics.jsonl`` holds one JSON object per line: ``{"type": "train", "update", "epoch",
"loss", ...}`` every ``log_every`` updates and ``{"type": "valid", "update", "epoch", "valid_loss",
"valid_bleu"}`` after each validation. :func:`plot_training_curves` draws one PNG with two panels
(training and validation loss; validation BLEU), one colour per run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from a2d.rundir import metrics_file
from a2d.utils import UserError, atomic_savefig


def read_metrics(path: Path | str) -> list[dict]:
    """The JSON objects of a ``metrics.jsonl`` file (blank lines skipped); a bad line is a UserError naming it."""
    path = metrics_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (is this a run folder? a2d train or a2d distill writes one)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records: list[dict], kind: str, key: str) -> tuple[list[float], list[float]]:
    points = []
    for r in records:
        if r.get("type") != kind:
            continue
        x, y = _number(r.get("update")), _number(r.get(key))
        if x is not None and y is not None:
            points.append((x, y))
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


#: The validation score each task records (translation, classification, language modelling), in that order.
SCORES = {"valid_bleu": "BLEU", "valid_accuracy": "accuracy", "valid_perplexity": "perplexity"}


def score_key(records: list[dict]) -> str:
    """The validation score a run's metrics hold (:data:`SCORES`; BLEU when there is none yet)."""
    keys = {k for r in records if r.get("type") == "valid" for k in r}
    return next((k for k in SCORES if k in keys), "valid_bleu")


def _labels(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def plot_training_curves(runs: list[Path], out: Path, log_y: bool = False) -> None:
    """Write one PNG to ``out``: train/valid loss and valid BLEU against updates, a colour per run.

    Each of ``runs`` is a run folder holding ``metrics.jsonl`` (or the file itself). The training loss
    is a solid line, the validation loss a dashed one with markers; ``log_y`` puts the loss on a log scale.
    The file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = [Path(r) for r in runs]
    if not runs:
        raise UserError("no runs to plot")
    run_dirs = [r.parent if r.is_file() else r for r in runs]
    data = [read_metrics(r) for r in runs]

    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_bleu = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    scores: set[str] = set()
    for label, records, colour in zip(_labels(run_dirs), data, colours):
        x, y = _series(records, "train", "loss")
        if x:
            ax_loss.plot(x, y, color=colour, linewidth=1.2, label=f"{label} train")
        x, y = _series(records, "valid", "valid_loss")
        if x:
            ax_loss.plot(x, y, color=colour, linestyle="--", marker="o", markersize=3, label=f"{label} valid")
        key = score_key(records)
        scores.add(SCORES[key])
        x, y = _series(records, "valid", key)
        if x:
            ax_bleu.plot(x, y, color=colour, marker="o", markersize=3, label=label)

    ax_loss.set_title("loss")
    ax_loss.set_xlabel("update")
    ax_loss.set_ylabel("loss (solid: train, dashed: valid)")
    loss_lines = ax_loss.get_lines()
    if log_y and loss_lines and all(min(line.get_ydata()) > 0 for line in loss_lines):
        ax_loss.set_yscale("log")
    named = " / ".join(sorted(scores, key=list(SCORES.values()).index)) or "BLEU"
    ax_bleu.set_title(f"validation {named}")
    ax_bleu.set_xlabel("update")
    ax_bleu.set_ylabel(named)
    for ax in (ax_loss, ax_bleu):
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()

    out = Path(out)
    atomic_savefig(fig, out)


__all__ = ["read_metrics", "plot_training_curves", "score_key", "SCORES"]
