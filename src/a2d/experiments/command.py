"""``a2d reproduce GRID`` (and ``benchmarks/quality.py GRID``): its arguments, and what they do.

Light to import (the CLI builds its parser with it); what the arguments do is :func:`a2d.experiments.runner.reproduce`.
"""
from __future__ import annotations

from pathlib import Path

from a2d.provenance import CHECKOUT

#: the checkout's benchmarks/results; installed from a wheel, ./benchmarks/results (never inside site-packages)
DEFAULT_RESULTS = (Path() if CHECKOUT is None else CHECKOUT) / "benchmarks" / "results"
DEFAULT_RUNS = Path("runs") / "quality"


def add_arguments(parser) -> None:
    """The arguments of ``a2d reproduce`` (and ``benchmarks/quality.py``)."""
    parser.add_argument("grid", type=Path, help="the grid YAML file (see a2d.experiments.grid)")
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING",
                        help="run only the cells whose id (DIRECTION/CELL-sSEED or DIRECTION/teacher) contains one of "
                             "these; a teacher that selected students need is trained too")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS,
                        help="where data and runs go (default %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                        help="where quality-<name>.{json,md} go (default: the a2d checkout's benchmarks/results; "
                             "./benchmarks/results where a2d is installed from a wheel)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the planned cells and which are done")
    mode.add_argument("--report-only", action="store_true", help="rebuild the JSON and markdown, train nothing")
    parser.add_argument("--redo", action="store_true",
                        help="train the selected cells again although their results are in the JSON (a cell whose run "
                             "folder holds cell.json is still skipped: remove the run folder to redo it)")


__all__ = ["add_arguments", "DEFAULT_RESULTS", "DEFAULT_RUNS"]
