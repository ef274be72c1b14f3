"""Components raise plain exceptions with data attributes; ``a2d.cli`` words them in the command line's terms."""
from __future__ import annotations

from pathlib import Path

import pytest

from a2d.analysis import NotAnAlignmentRun
from a2d.cli import _message
from a2d.config import ConfigError
from a2d.errors import CannotCreate, NothingToResume, OutputExists, ResumeMismatch
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
    (OutputExists(Path("r"), "folder exists and is not empty", resume=True),
     "r: folder exists and is not empty; resume=True continues it, or choose another folder",
     "--out r: folder exists and is not empty; use --resume to continue it, or choose another --out"),
    (OutputExists(Path("d"), "holds files a2d prepare did not write (x.txt)", overwrite="replace the prepared files"),
     "d: holds files a2d prepare did not write (x.txt); choose another folder, or give overwrite=True to replace "
     "the prepared files",
     "--out d: holds files a2d prepare did not write (x.txt); choose another --out, or give --overwrite to replace "
     "the prepared files"),
    (OutputExists(Path("e")), "e: already exists; remove it or choose another folder",
     "--out e: already exists; remove it or choose another --out"),
    (CannotCreate(Path("r"), "Permission denied"), "r: cannot create (Permission denied)",
     "--out r: cannot create (Permission denied)"),
    (NothingToResume(Path("r"), {"notes.txt", "a.txt"}),
     "r has no last/ checkpoint to resume from (found a.txt, notes.txt); choose another folder",
     "--resume: r has no last/ checkpoint to resume from (found a.txt, notes.txt); choose another --out"),
    (ResumeMismatch(Path("r"), Path("r/config.yaml"), changed=[("d_model", 32, 64)]),
     "r: d_model=32 (the run has 64) differs from r/config.yaml; the checkpoint cannot take it (drop the override, "
     "or start a new run in another folder)",
     "--resume r: d_model=32 (the run has 64) differs from r/config.yaml; the checkpoint cannot take it (drop the "
     "override, or start a new run with another --out)"),
    (ResumeMismatch(Path("r"), Path("r/config.yaml"), vocabulary=Path("r/last")),
     "r: the data has another vocabulary than the run was trained with (r/last); give the run's own data directory",
     "--resume r: --data has another vocabulary than the run was trained with (r/last); give the run's own data "
     "directory"),
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


@pytest.mark.parametrize("error", [OutputExists(Path("r"), resume=True), NothingToResume(Path("r"), ["x"]),
                                   ResumeMismatch(Path("r"), Path("c"), changed=[("k", 1, 2)])])
def test_a_python_caller_reads_no_command_line_flag(error):
    assert "--" not in str(error)
