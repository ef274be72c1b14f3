"""Speed, size and quality of a teacher and its students: :mod:`a2d.experiments.speed` (its docstring says what
is measured and how). Writes PREFIX.json, PREFIX.md and PREFIX.png.

    python benchmarks/speed.py --data DATA --teacher T_DIR --student "KD=RUN" --student "A2D=RUN" \\
        --target-student A2D [--engines hf-fp32 ct2-float32 ct2-int8] [--beam 1 5] [--threads 1 2] \\
        [--force-length L] [--repeats N] [--shortlist [--top-n N] [--frequent K]] --out benchmarks/results/speed-NAME
"""
from __future__ import annotations

import sys

from a2d.experiments.speed import main

if __name__ == "__main__":
    sys.exit(main())
