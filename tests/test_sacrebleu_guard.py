"""Guard: a2d.evaluate uses sacreBLEU's private ``significance._bootstrap_resample``,
``Metric._extract_corpus_statistics`` and ``Score._mean``/``_ci`` (pyproject pins ``sacrebleu<2.7``). If a new
sacreBLEU changes their shape, this fails here, loudly, rather than the confidence intervals going quietly wrong."""
from __future__ import annotations

import inspect

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU
from sacrebleu.significance import _bootstrap_resample

from a2d.evaluate import BOOTSTRAP_SEED, score

HYPS = ["the cat sat on the mat", "a dog runs", "hello world again", "it is raining today", "one two three"]
REFS = ["the cat sat on a mat", "the dog runs", "hello world", "it rains today", "one two three four"]


def test_private_signatures_are_what_evaluate_calls():
    assert list(inspect.signature(_bootstrap_resample).parameters)[:3] == ["stats", "metric", "n_samples"], \
        f"sacrebleu {sacrebleu.__version__}: _bootstrap_resample changed; update a2d.evaluate._percentile_ci"
    assert list(inspect.signature(BLEU._extract_corpus_statistics).parameters) == ["self", "hypotheses", "references"], \
        f"sacrebleu {sacrebleu.__version__}: _extract_corpus_statistics changed; update a2d.evaluate._percentile_ci"


def test_private_functions_return_what_evaluate_reads(monkeypatch):
    monkeypatch.setenv("SACREBLEU_SEED", str(BOOTSTRAP_SEED))
    metric = BLEU()
    stats = metric._extract_corpus_statistics(HYPS, [REFS])
    assert len(stats) == len(HYPS) and all(isinstance(row, (list, tuple)) for row in stats)
    name, scores = _bootstrap_resample(stats, metric, 50)
    assert isinstance(name, str) and len(scores) == 50 and all(isinstance(s.score, float) for s in scores)
    # the bounds a2d.evaluate.score takes from the resamples are sacreBLEU's own mu +- ci
    own = BLEU().corpus_score(HYPS, [REFS], n_bootstrap=50)
    ours = score(HYPS, REFS, n_bootstrap=50)
    low, high = ours["bleu_ci"]
    assert ours["bleu_mean"] == pytest.approx(own._mean) and low <= own._mean <= high
    assert (high - low) / 2 == pytest.approx(own._ci, abs=1e-9)
