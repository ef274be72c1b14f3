"""The stand-in reports' statistics (a2d.experiments.families)."""
from __future__ import annotations

import numpy as np
import pytest

from a2d.experiments.families import bootstrap_ci, paired_randomisation, render


def test_paired_randomisation():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 500).astype(float)
    assert paired_randomisation(a, a) == 1.0  # no difference at all
    better = np.where(rng.random(500) < 0.3, 1.0, a)  # flips 30% of the items to correct
    assert paired_randomisation(better, a, n=2000) < 0.001
    noise = np.where(rng.random(500) < 0.02, 1 - a, a)  # a few flips both ways
    assert paired_randomisation(noise, a, n=2000) > 0.05


def test_bootstrap_ci_brackets_the_statistic():
    x = np.random.default_rng(1).normal(3.0, 1.0, 400)
    lo, hi = bootstrap_ci(lambda v: v.mean(), x, n=300)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.3)


def test_render_names_the_systems_and_tests():
    record = {"title": "T", "data": "D", "split": "test", "commit": "abc", "hardware": "cpu", "time": "now",
              "systems": {"teacher": {"metric": "accuracy", "value": 80.0, "ci": [78.0, 82.0], "f1": 79.0,
                                      "mcc": 60.0, "best_epoch": 3, "epochs": 4}},
              "tests": [{"system": "A2D", "baseline": "KD", "difference": 1.5, "p": 0.01, "items": 1000}],
              "samples": {}, "commands": ["a2d train ..."]}
    text = render(record)
    assert "| teacher | 80.00 | 78.00-82.00 | 79.00 | 60.00 | 3 / 4 |" in text
    assert "| A2D | KD | +1.50 | 0.0100 |" in text and "a2d train ..." in text
