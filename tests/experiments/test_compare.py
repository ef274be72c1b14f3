"""a2d.experiments.compare: results scored before chrF had an interval get it from their stored hypotheses."""
from __future__ import annotations

from a2d.evaluate import score
from a2d.experiments.compare import _add_chrf_ci

REFS = ["the cat sat on the mat .", "a dog runs in the park .", "two men play football on a green field ."]
HYPS = ["the cat sat on a mat .", "a dog is running in a park .", "two men are playing soccer on a field ."]


def test_an_old_result_gets_its_chrf_interval_from_its_hypotheses():
    scored = score(HYPS, REFS)
    old = {"id": "de-en/kd-s1", "chrf": scored["chrf"], "hypotheses": HYPS, "references": REFS}
    notes = []
    _add_chrf_ci(old, notes.append)
    assert old["chrf_ci"] == scored["chrf_ci"] and old["chrf_ci"][0] < old["chrf_ci"][1] and notes == []


def test_hypotheses_that_give_another_chrf_leave_it_without():
    """Stored translations that do not give the chrF recorded (another sacreBLEU, other files) give no interval:
    an interval around another score would be wrong."""
    other = {"id": "de-en/kd-s1", "chrf": 12.5, "hypotheses": HYPS, "references": REFS}
    notes = []
    _add_chrf_ci(other, notes.append)
    assert "chrf_ci" not in other and len(notes) == 1 and "de-en/kd-s1" in notes[0] and "12.5000" in notes[0]
    kept = {"id": "x", "chrf": 1.0, "chrf_ci": [0.5, 1.5], "hypotheses": HYPS, "references": REFS}
    _add_chrf_ci(kept, notes.append)
    assert kept["chrf_ci"] == [0.5, 1.5]
    bare = {"id": "y", "chrf": 1.0}  # no stored translations: nothing to compute from
    _add_chrf_ci(bare, notes.append)
    assert "chrf_ci" not in bare and len(notes) == 1
