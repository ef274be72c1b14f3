"""Components raise plain exceptions with data attributes; ``a2d.cli`` words them in the command line's terms."""
from __future__ import annotations

from pathlib import Path

import pytest

from a2d.analysis import NotAnAlignmentRun
from a2d.cli import _message
from a2d.config import ConfigError
from a2d.methods import NotDistilledData, TeacherRequired, UnknownMethod, get_method
from a2d.utils import UserError


@pytest.mark.parametrize("error, plain, cli", [
    (UnknownMethod("nope", ["a2d", "kd"]), "unknown method 'nope' (choose from a2d, kd)",
     "--method nope: unknown method (choose from a2d, kd)"),
    (TeacherRequired("kd"), "method kd needs a teacher", "method kd needs a teacher; give --teacher RUN"),
    (NotDistilledData("seq-kd", Path("data/x")),
     "method seq-kd trains on the teacher's translations, but data/x is not a distilled one (no distilled_from in "
     "meta.json; the distill-data recipe writes one)",
     "--method seq-kd trains on the teacher's translations, but data/x is not a distilled one (no distilled_from "
     "in meta.json): run `a2d distill-data --teacher RUN --data DIR --out DIR2` and give --data DIR2"),
    (NotAnAlignmentRun(Path("runs/r"), ["runs/r/method.json"]), "runs/r: not an A2D run, missing runs/r/method.json",
     "runs/r: not an A2D run, missing runs/r/method.json; run a2d distill --method a2d to make one"),
    (UserError("plain"), "plain", "plain"),
    (ConfigError("bad key"), "bad key", "bad key"),
])
def test_component_errors_and_their_cli_lines(error, plain, cli):
    assert isinstance(error, (UserError, ConfigError))
    assert str(error) == plain and "\n" not in plain
    assert _message(error) == cli


def test_get_method_raises_unknown_method():
    with pytest.raises(UnknownMethod) as err:
        get_method("nope")
    assert err.value.name == "nope" and "kd" in err.value.choices
    assert list(err.value.choices) == sorted(err.value.choices)
