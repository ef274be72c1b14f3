"""The plan of a grid: its jobs (the teacher and every cell x seed of each direction), where each one's
data and run folder are, and what a run folder says about itself.

``RUNS/<name>/<src>-<tgt>/teacher`` (or the teacher of the grid this one continues), then
``RUNS/<name>/<src>-<tgt>/<cell>-s<seed>``; the data of a direction is ``RUNS/data-<src>-<tgt>``, prepared
once for every grid of the same corpus. A run's status and checkpoint state come from
:class:`a2d.rundir.RunDir`, its metrics from :func:`a2d.curves.read_metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from a2d.curves import read_metrics
from a2d.experiments.grid import TEACHER, Cell, Grid
from a2d.rundir import RunDir

CELL_FILE = "cell.json"  # a scored job's result, beside its run
WALL_FILE = "wall.json"  # the wall time of each piece of a job's training


@dataclass
class Job:
    direction: str
    cell: Cell | None  # None: the teacher
    seed: int | None
    run: Path

    @property
    def id(self) -> str:
        return f"{self.direction}/{TEACHER}" if self.cell is None else f"{self.direction}/{self.cell.name}-s{self.seed}"

    @property
    def name(self) -> str:
        return TEACHER if self.cell is None else self.cell.name

    def config(self, grid: Grid):
        return grid.teacher_config() if self.cell is None else grid.cell_config(self.cell, self.seed)


def plan(grid: Grid, runs: Path) -> list[Job]:
    jobs = []
    for d in grid.directions:
        jobs.append(Job(d, None, None, runs / grid.teacher_grid / d / TEACHER))
        for cell in grid.cells.values():
            for seed in grid.cell_seeds(cell):
                jobs.append(Job(d, cell, seed, runs / grid.name / d / f"{cell.name}-s{seed}"))
    return jobs


def data_dir(grid: Grid, runs: Path, direction: str) -> Path:
    prefix = "data" if grid.corpus == "multi30k" else f"data-{grid.corpus}"
    return runs / f"{prefix}-{direction}"


def eval_dir(grid: Grid, runs: Path, direction: str) -> Path:
    base = data_dir(grid, runs, direction)
    return base if not grid.test_max_sentences else base.with_name(f"{base.name}-test{grid.test_max_sentences}")


def seqkd_dir(grid: Grid, runs: Path, direction: str) -> Path:
    """The teacher's translations of the training sources, for the cells that train on generated data
    (``seqkd-data-b<beam>``, and ``-<engine>`` when CTranslate2 decodes them)."""
    engine = "" if grid.seq_kd_engine == "hf" else f"-{grid.seq_kd_engine}"
    return runs / grid.name / direction / f"seqkd-data-b{grid.seq_kd_beam}{engine}"


def kd_cache_dir(grid: Grid, runs: Path, direction: str, topk: int, temperature: float,
                 attention: bool = False) -> Path:
    """The cache of the teacher's top-``topk`` log-probabilities at ``temperature`` (and with ``attention`` its
    attention maps) that cells with ``kd_cache_topk`` read (``kd-cache-top<K>-t<T>[-att]``), one per grid,
    direction, K, temperature and content."""
    return runs / grid.name / direction / f"kd-cache-top{topk}-t{temperature:g}{'-att' if attention else ''}"


def run_status(run: Path) -> str:
    """``finished``, ``started`` (resumable), ``broken`` (files but no checkpoint: start over) or ``new``; the
    job's own ``wall.json`` is no run's file."""
    return RunDir(run).status(others=(WALL_FILE,))


def run_metrics(run: Path) -> dict:
    """What a run's ``metrics.jsonl`` says: best and per-epoch validation BLEU, the last L_att, each training
    term's mean per epoch; and its updates (from the checkpoint)."""
    out = {"valid_best_bleu": None, "valid_best_epoch": None, "valid_epochs": 0, "valid_curve": [], "final_att": None,
           "updates": None, "loss_terms": {}}
    if not RunDir(run).metrics_file.is_file():
        return out
    sums: dict[str, dict[int, list[float]]] = {}  # term -> epoch -> [sum, count]
    for rec in read_metrics(run):
        if rec.get("type") == "train" and rec.get("epoch") is not None:
            terms = {"ce": rec.get("ce")}
            if "att" in rec:
                terms["att"], terms["w_att"] = rec["att"], rec.get("w_att", 1.0)
                terms["weighted_att"] = rec["att"] * rec.get("w_att", 1.0)
            if "kd" in rec:
                terms["weighted_kd"] = rec["kd"] * rec.get("w_kd", 1.0)
            for key, value in terms.items():
                if value is not None:
                    acc = sums.setdefault(key, {}).setdefault(int(rec["epoch"]), [0.0, 0])
                    acc[0] += float(value)
                    acc[1] += 1
        if rec.get("type") == "valid" and rec.get("valid_bleu") is not None:
            out["valid_curve"].append(round(float(rec["valid_bleu"]), 2))
            if out["valid_best_bleu"] is None or rec["valid_bleu"] > out["valid_best_bleu"]:
                out["valid_best_bleu"], out["valid_best_epoch"] = float(rec["valid_bleu"]), rec.get("epoch")
        if rec.get("type") == "train" and "att" in rec:
            out["final_att"] = float(rec["att"])
    out["valid_epochs"] = len(out["valid_curve"])
    # mean of each logged training term per epoch (what the loss is made of, and how it moves)
    out["loss_terms"] = {key: [round(total / n, 4) for _, (total, n) in sorted(by_epoch.items())]
                         for key, by_epoch in sums.items()}
    state = RunDir(run).state()
    out["updates"] = state.update if state is not None else None
    return out


__all__ = ["Job", "plan", "data_dir", "eval_dir", "seqkd_dir", "kd_cache_dir", "run_status", "run_metrics", "CELL_FILE", "WALL_FILE"]
