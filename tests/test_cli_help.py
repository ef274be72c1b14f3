"""Help that teaches: every subcommand's --help gives its purpose and a runnable example."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from a2d.cli import build_parser

PARSER = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_top_level_help_lists_the_usual_sequence():
    text = PARSER.format_help()
    positions = [text.index(f"a2d {step} ") for step in ("prepare", "train", "distill", "evaluate", "export")]
    assert positions == sorted(positions)
    assert "a2d demo" in text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_has_a_purpose_and_an_example(name):
    sub = SUBCOMMANDS[name]
    text = sub.format_help()
    assert sub.description and "\n" not in sub.description.strip(), "a one-line purpose"
    assert "example:" in text
    examples = text.split("example:", 1)[1]
    assert f"a2d {name}" in examples, f"the example runs `a2d {name}`"


@pytest.mark.parametrize("argv, command", [
    (["train", "--data", "{tmp}/nothing", "--preset", "tiny-teacher", "--out", "{tmp}/run"], "a2d prepare"),
    (["evaluate", "--model", "{tmp}/nothing", "--data", "{tmp}/nothing"], "a2d prepare"),
    (["export", "--model", "{tmp}/empty", "--out", "{tmp}/export"], "a2d train"),
    (["plot", "{tmp}/empty", "--out", "{tmp}/curves.png"], "a2d train"),
    (["plot-alignment", "--run", "{tmp}/empty", "--out", "{tmp}/alignment.png"], "a2d distill"),
])
def test_an_error_about_a_missing_step_names_the_command(argv, command, tmp_path, capsys):
    """A missing data directory, model or run says which command makes it."""
    from a2d.cli import main

    (tmp_path / "empty").mkdir()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("a2d: error:") and command in err, err


def test_overrides_may_follow_the_options(monkeypatch):
    """``key=value`` after ``--out`` (as the help examples write it) reaches the overrides; anything else left over
    is still an error."""
    from a2d import cli

    seen = {}
    monkeypatch.setitem(cli.COMMANDS, "distill", (lambda args: seen.setdefault("overrides", args.overrides),))
    argv = ["distill", "--data", "d", "--teacher", "t", "--method", "kd", "lr=1e-3", "--out", "o", "kd_cache=c"]
    assert cli.main(argv) == 0 and seen["overrides"] == ["lr=1e-3", "kd_cache=c"]
    with pytest.raises(SystemExit):
        cli.main(["distill", "--data", "d", "--out", "o", "--bogus"])


def test_every_command_has_a_handler_and_its_components_exist():
    """``COMMANDS`` covers the parser's commands, and each ``module:name`` it names can be loaded."""
    from a2d import cli

    assert set(cli.COMMANDS) == set(SUBCOMMANDS)
    for handler, *targets in cli.COMMANDS.values():
        assert callable(handler)
        for target in targets:
            assert cli._load(target) is not None, target


def test_parsing_loads_no_torch():
    """Building the parser (and so every --help) imports neither torch nor transformers: its defaults live in light
    modules and each command's components are imported when it runs."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys, a2d.cli; a2d.cli.build_parser().parse_args(['train', '--data', 'd', '--out', 'o']); "
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["distill", "distill-data"])
def test_teacher_help_names_hugging_face_folders(name):
    text = " ".join(SUBCOMMANDS[name].format_help().split())
    assert "--teacher TEACHER the teacher: a run folder (or its best/), or a Hugging Face Marian folder" in text
    assert "OPUS-MT" in text


@pytest.mark.parametrize("name", ["translate", "evaluate"])
def test_the_default_beam_is_the_models(name):
    text = " ".join(SUBCOMMANDS[name].format_help().split())
    assert "--beam BEAM beam size (default: the num_beams the model's folder records, else 5)" in text
