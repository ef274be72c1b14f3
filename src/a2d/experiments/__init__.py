"""Experiments: a grid of teachers and students trained, scored, compared and reported (the quality benchmark).

``a2d reproduce GRID`` (or ``python benchmarks/quality.py GRID``) runs one. The modules, in the order of a run:

* :mod:`~a2d.experiments.grid`: the grid file, read into dataclasses and checked (:func:`load_grid`);
* :mod:`~a2d.experiments.plan`: its jobs, their data and run folders, what a run folder says;
* :mod:`~a2d.experiments.runner`: data staging, training and scoring each job, ``continue_from``;
* :mod:`~a2d.experiments.stores`: the translations, teachers and students kept beside the results;
* :mod:`~a2d.experiments.compare`: results merged, paired bootstrap tests, the best A2D student's figure;
* :mod:`~a2d.experiments.report`: ``quality-<name>.json`` and the markdown tables;
* :mod:`~a2d.experiments.files`: their text and JSON files, read back exactly as written.

Beside the grids, :mod:`~a2d.experiments.speed` (``python benchmarks/speed.py``) reports the speed, size and
quality of a teacher and its students on every engine.

Each result records its hardware, commit and time (:mod:`a2d.provenance`).

What a method is to an experiment (its label, whether it needs a teacher or trains on the teacher's
translations, which baseline it is) is said by its class in :mod:`a2d.methods`.
"""
