"""Components raise plain exceptions with data attributes; ``a2d.cli`` words them in the command line's terms."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import a2d
from a2d.analysis import NotAnAlignmentRun
from a2d.cli import _FLAGS, _message, _options, main
from a2d.config import ConfigError
from a2d.errors import BadValue, CannotCreate, NothingToResume, OutputExists, ResumeMismatch
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
    (BadValue("beam", 0, "must be at least 1"), "beam=0: must be at least 1", "--beam 0: must be at least 1"),
    (BadValue("data_dir", Path("d x"), "its ids go past the pieces of {model}'s vocabulary", model=Path("m")),
     "data_dir='d x': its ids go past the pieces of model='m''s vocabulary",
     "--data 'd x': its ids go past the pieces of --model m's vocabulary"),
    (BadValue(("src_lang", "tgt_lang"), ("de", "de"), "source and target languages must differ"),
     "src_lang='de', tgt_lang='de': source and target languages must differ",
     "--src de --tgt de: source and target languages must differ"),
    (BadValue("temperature", 0.25, "must be at least 0.5"), "temperature=0.25: must be at least 0.5",
     "--kd-temperature 0.25: must be at least 0.5"),
    (BadValue("shortlist", True, "x has no vmap.txt"), "shortlist=True: x has no vmap.txt",
     "--shortlist: x has no vmap.txt"),
    (BadValue("teacher_path", None, "needed with kd_cache=c (the cache is checked against it)"),
     "teacher_path: needed with kd_cache=c (the cache is checked against it)",
     "--teacher: needed with kd_cache=c (the cache is checked against it)"),
    (BadValue("out", Path("c"), "rerun with the same {topk}, or choose another {out}"),
     "out='c': rerun with the same topk, or choose another out", "--out c: rerun with the same --cache-topk, or "
     "choose another --out"),
    (BadValue("chunk", 0, "raise {max_positions}"), "chunk=0: raise max_positions",  # no option: key=value
     "chunk=0: raise max_positions"),
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
                                   ResumeMismatch(Path("r"), Path("c"), changed=[("k", 1, 2)]),
                                   BadValue("max_tokens", 1, "raise it, or prepare with {max_len}", max_len=3)])
def test_a_python_caller_reads_no_command_line_flag(error):
    assert "--" not in str(error)


def test_the_flags_named_for_parameters_are_options_of_the_command_line():
    assert set(_FLAGS.values()) <= _options()


# ------------------------------------------------------------------------------------- no flag in a component's error
#: The command-line programs, which word their errors with their options (benchmarks' own argument checks included).
COMMAND_LINES = {"cli.py", "experiments/speed.py", "experiments/runner.py"}
#: Flags that stay, each with its reason (file, the start of the text): none is a UserError.
ALLOWED = {
    ("config.py", "--preset {}: unknown preset"): "a ConfigError of load_config, not a UserError (yet)",
    ("training.py", "{} at update {}; {} is saved: the same command with --resume"):
        "Interrupted, a KeyboardInterrupt: the command line prints it as it is, and it speaks of the command",
}
#: ``--flag`` outside a command to run, which a message quotes in backticks (``make one with `a2d export ...```).
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def flags_in_raises(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each string in a ``raise`` statement of ``source`` that spells a ``--flag`` outside
    backticks; an f-string's values count as ``{}``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        parts = list(ast.walk(node.exc))
        inner = {id(v) for part in parts if isinstance(part, ast.JoinedStr) for v in part.values}
        for part in parts:
            if id(part) in inner:
                continue
            if isinstance(part, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in part.values)
            elif isinstance(part, ast.Constant) and isinstance(part.value, str):
                text = part.value
            else:
                continue
            if FLAG.search(re.sub(r"`[^`]*`", "", text)):
                found.append((part.lineno, text))
    return sorted(found)


def test_no_component_error_spells_a_command_line_flag():
    """Components word their errors for any caller (``beam=0``, not ``--beam 0``): only the command lines name
    options (a :class:`a2d.errors.BadValue` carries the parameter, :func:`a2d.cli._message` words it)."""
    src = Path(a2d.__file__).parent
    found = [f"{name}:{line}: {text}" for path in sorted(src.rglob("*.py"))
             if (name := path.relative_to(src).as_posix()) not in COMMAND_LINES
             for line, text in flags_in_raises(path.read_text(encoding="utf-8"))
             if not any(name == file and text.startswith(start) for file, start in ALLOWED)]
    assert found == []


def test_the_static_check_finds_a_flag():
    source = ('def f(x):\n    if x:\n        raise UserError(f"--beam {x}: must be at least 1")\n'
              '    raise ValueError("give " "--max-len " f"{x}; or run `a2d prepare --max-len 5`")\n')
    assert [line for line, _ in flags_in_raises(source)] == [3, 4]
    assert flags_in_raises('raise UserError(f"x: make one with `a2d export --model {x} --out DIR`")') == []
    assert flags_in_raises('raise UserError("max_len=-1: no; x--y is a name")') == []


@pytest.mark.parametrize("argv, line", [
    (["--max-len", "0"], "a2d: error: --max-len 0: must be at least 1"),
    (["--vocab-size", "4"], "a2d: error: --vocab-size 4: must be larger than 4 (pad, unk, bos, eos come first)"),
    (["--tgt", "de"], "a2d: error: --src de --tgt de: source and target languages must differ"),
    (["--src", "d e"], "a2d: error: --src 'd e': a language code is letters, digits, '-' or '_'"),
])
def test_the_command_line_names_the_option_of_a_bad_value(argv, line, tmp_path, capsys):
    """A component's :class:`BadValue` (prepare's argument checks, before any file is read) is one line that
    names the option at fault."""
    files = [a for split in ("train", "valid") for side in ("src", "tgt")
             for a in (f"--{split}-{side}", str(tmp_path / f"{split}.{side}"))]
    out = tmp_path / "out"
    assert main(["prepare", *files, "--src", "de", "--tgt", "en", "--out", str(out), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""
    assert not out.exists()
