"""Analysis of a trained A2D run: the AAM connection weights of Figure 2.

``plot_alignment(RUN, out.png)`` reads ``RUN/method.json`` (``AlignToDistill.describe()``) and
``RUN/method.safetensors`` (the method's ``state_dict`` beside the best student: ``aam.<kind>.logits`` for
a convex AAM, ``aam.<kind>.weight``/``bias`` for a linear one; for ``RUN/last``, the last checkpoint's,
from ``RUN/last/trainer/``), rebuilds each kind's effective weight matrix
``w (n_student, n_teacher)`` of eq. 9 and draws one heatmap per kind (student heads x teacher heads,
dashed lines at layer boundaries). The paper reads Figure 2 as: encoder connections sparse (most
weights near 0), decoder connections spread out (weights near 0.2); :func:`format_summary` prints
the numbers that check this: the share of ``|w| < 0.05``, the mean ``|w|`` and the mean entropy of
each teacher map's weights over the student maps.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from a2d.alignment import mixing_matrix
from a2d.errors import NotAnAlignmentRun
from a2d.rundir import method_files, run_label
from a2d.utils import UserError, atomic_savefig

SMALL = 0.05  # |w| below this counts as "no connection"
_TITLES = {"enc_self": "encoder self-attention", "dec_self": "decoder self-attention",
           "dec_cross": "decoder cross-attention"}


def load_alignment(run_dir: Path | str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(description, {kind: w (n_student, n_teacher)})`` from ``RUN/method.json`` and ``RUN/method.safetensors``
    (the best student's AAM); for ``RUN/last``, the AAM of the last checkpoint (``RUN/last/trainer/``)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    desc_file, weights_file = method_files(run_dir)
    missing = [str(f) for f in (desc_file, weights_file) if not f.is_file()]
    if missing:
        raise NotAnAlignmentRun(run_dir, missing)
    try:
        desc = json.loads(desc_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{desc_file}: not valid JSON ({e.msg})") from None
    kinds = desc.get("kinds") if isinstance(desc, dict) else None
    if not kinds:
        raise UserError(f"{desc_file}: no AAM kinds recorded (was the run distilled with a2d?)")
    try:
        state = load_file(str(weights_file))
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"{weights_file}: cannot read ({str(e).splitlines()[0]})") from None
    mode = desc.get("aam", "convex")
    weights = {}
    for kind, info in kinds.items():
        key = info.get("state_key") or f"aam.{kind}.{'logits' if mode == 'convex' else 'weight'}"
        if key not in state:
            raise UserError(f"{weights_file}: no tensor {key!r} for {kind}")
        w = mixing_matrix(state[key], mode).numpy()
        if w.shape != (info["n_student"], info["n_teacher"]):
            raise UserError(f"{run_dir}: {key} has shape {w.shape[::-1]}, method.json says "
                            f"{info['n_teacher']} x {info['n_student']}")
        weights[kind] = w
    return desc, weights


def summarize_weights(w: np.ndarray) -> dict:
    """Numbers for one kind's ``w (n_student, n_teacher)``.

    ``share_small``: share of weights with ``|w| < 0.05``; ``mean_abs``: mean ``|w|``;
    ``mean_entropy``: mean over teacher maps c of ``H(p_c)``, ``p_c = |w[:, c]| / sum |w[:, c]|`` (nats);
    ``mean_entropy_norm``: the same divided by ``log(n_student)`` (1 = spread evenly, 0 = one student map).

    For a convex AAM every column sums to 1, so ``mean_abs`` is always ``1/n_student`` and a uniform
    column already counts as "small" once ``n_student > 20``; the entropy is the informative number
    there. The paper's "near 0 vs near 0.2" reading of Figure 2 refers to its free (linear) weights.
    """
    w = np.asarray(w, dtype=np.float64)
    a = np.abs(w)
    col = a.sum(axis=0, keepdims=True)
    p = np.divide(a, col, out=np.full_like(a, 1.0 / a.shape[0]), where=col > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=0)
    n_student = w.shape[0]
    mean_ent = float(ent.mean())
    return {
        "n_student": int(n_student), "n_teacher": int(w.shape[1]),
        "share_small": float((a < SMALL).mean()), "mean_abs": float(a.mean()),
        "mean_entropy": mean_ent,
        "mean_entropy_norm": float(mean_ent / math.log(n_student)) if n_student > 1 else 0.0,
    }


def _draw(ax, fig, kind: str, w: np.ndarray, info: dict, mode: str) -> None:
    if mode == "convex" or w.min() >= 0:
        im = ax.imshow(w, cmap="Blues", vmin=0.0, vmax=max(float(w.max()), 1e-6), aspect="auto",
                       interpolation="nearest")
    else:
        lim = max(float(np.abs(w).max()), 1e-6)
        im = ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    n_s, n_t = w.shape
    s_per, t_per = info.get("student_maps_per_layer", 1), info.get("teacher_maps_per_layer", 1)
    if s_per > 1:  # layer boundaries (none to draw for layer-wise maps: every row is a layer)
        for k in range(s_per, n_s, s_per):
            ax.axhline(k - 0.5, color="k", linestyle="--", linewidth=0.8)
    if t_per > 1:
        for k in range(t_per, n_t, t_per):
            ax.axvline(k - 0.5, color="k", linestyle="--", linewidth=0.8)
    unit = "heads" if s_per > 1 or t_per > 1 else "layers"
    ax.set_title(f"{kind} ({_TITLES.get(kind, kind)})", fontsize=10)
    ax.set_ylabel(f"student {unit} ({info.get('student_layers', '?')} layers x {s_per})")
    ax.set_xlabel(f"teacher {unit} ({info.get('teacher_layers', '?')} layers x {t_per})")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_alignment(run_dir: Path | str, out_png: Path | str) -> dict:
    """Figure 2: a heatmap panel per kind of the AAM weights of ``RUN``, written atomically to ``out_png``.

    Returns ``{"aam": mode, "granularity": ..., "kinds": {kind: summarize_weights(w)}, "png": path}``.
    Missing ``method.json``/``method.safetensors`` raise :class:`~a2d.utils.UserError` naming them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    desc, weights = load_alignment(run_dir)
    mode = desc.get("aam", "convex")
    kinds = list(weights)
    fig = Figure(figsize=(5.0 * len(kinds), 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        _draw(ax, fig, kind, weights[kind], desc["kinds"][kind], mode)
    fig.suptitle(f"AAM connection weights ({mode}, {desc.get('granularity', 'head')}-wise): {run_label(run_dir)}")
    out_png = Path(out_png)
    atomic_savefig(fig, out_png)
    return {"aam": mode, "granularity": desc.get("granularity", "head"),
            "kinds": {kind: summarize_weights(w) for kind, w in weights.items()}, "png": str(out_png)}


def format_summary(summary: dict) -> str:
    """A table of :func:`plot_alignment`'s numbers, one line per kind."""
    lines = [f"AAM weights ({summary.get('aam', '?')}, {summary.get('granularity', 'head')}-wise)",
             f"{'kind':<10} {'student x teacher':>17} {'|w|<0.05':>9} {'mean|w|':>8} {'entropy':>8} {'/log(n)':>8}"]
    for kind, s in summary["kinds"].items():
        lines.append(f"{kind:<10} {str(s['n_student']) + ' x ' + str(s['n_teacher']):>17} {s['share_small']:>9.1%} "
                     f"{s['mean_abs']:>8.3f} {s['mean_entropy']:>8.3f} {s['mean_entropy_norm']:>8.2f}")
    lines.append("entropy: of each teacher map's |w| over student maps (nats, mean over teacher maps); "
                 "higher = more spread connections")
    if summary.get("aam") == "convex":
        lines.append("convex AAM: columns sum to 1, so mean|w| = 1/n_student; compare the entropies")
    return "\n".join(lines)


__all__ = ["NotAnAlignmentRun", "plot_alignment", "format_summary", "load_alignment", "summarize_weights"]
