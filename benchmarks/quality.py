"""Quality benchmark (issue 5): the paper's Table 1 and its ablations, trained and scored from a grid file.

    python benchmarks/quality.py benchmarks/grids/tiny.yaml [--only SUBSTRING ...] [--runs-dir runs/quality]
                                 [--results-dir benchmarks/results] [--dry-run] [--report-only] [--redo]

The same as ``a2d reproduce GRID ...``; the work is done by :mod:`a2d.experiments` (the grid file's keys are
described in :mod:`a2d.experiments.grid`, the outputs in :mod:`a2d.experiments.runner`, ``.stores`` and
``.report``).

Outputs (rewritten atomically after every finished cell):

* ``RESULTS/quality-<name>.json`` and ``RESULTS/quality-<name>.md``: every cell's result, the paired bootstrap
  comparisons, Table 1, the validation BLEU, the ablation tables and the alignment figures;
* ``RESULTS/quality-<name>-hyps/``: every cell's test translations (sha256-checked);
* ``RESULTS/quality-<name>-teachers/`` and ``-students/`` (grids with ``store_teachers: true``): the teachers'
  and the best students' weights and vocabularies, with sha256 manifests.

``--dry-run`` prints the planned cells and which are done; ``--report-only`` rebuilds the JSON and the
markdown from the results found, training nothing (the run folders are not needed).
"""
from __future__ import annotations

import sys

from a2d.cli import main

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
