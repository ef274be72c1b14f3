"""Help that teaches: every subcommand's --help gives its purpose and a runnable example."""
from __future__ import annotations

import argparse

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
    monkeypatch.setattr(cli, "cmd_distill", lambda args: seen.setdefault("overrides", args.overrides))  # main builds its parser
    argv = ["distill", "--data", "d", "--teacher", "t", "--method", "kd", "lr=1e-3", "--out", "o", "kd_cache=c"]
    assert cli.main(argv) == 0 and seen["overrides"] == ["lr=1e-3", "kd_cache=c"]
    with pytest.raises(SystemExit):
        cli.main(["distill", "--data", "d", "--out", "o", "--bogus"])
