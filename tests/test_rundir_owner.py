"""One owner of the run-folder layout: within src/, only a2d/rundir.py spells a run folder's file and folder names.

Everything else asks :mod:`a2d.rundir` (``RunDir(run).best``, :func:`~a2d.rundir.method_files`, ...), so that the
layout changes in one place. The experiments' own ``wall.json`` is theirs: rundir.py does not know it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import a2d

PACKAGE = Path(a2d.__file__).resolve().parent
#: The names of a run folder's files and folders (:mod:`a2d.rundir`'s docstring draws the layout).
RUN_FOLDER_NAMES = {"best", "last", "trainer", "config.yaml", "metrics.jsonl", "state.json", "method.safetensors",
                    "method.json"}
#: The same words meaning something else: (file, word) and what it is there.
OTHER_MEANINGS = {
    ("methods/pkd.py", "last"): "PKD's layer mapping (the teacher's last layers)",
    ("methods/minilm.py", "last"): "MiniLM's description: the last layer's attention",
}


def string_constants(path: Path) -> list[tuple[int, str]]:
    """The string literals of a Python file (f-strings' literal parts too), with their line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_only_rundir_spells_run_folder_names():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "rundir.py":
            continue
        found += [f"{name}:{line}: {value!r}" for line, value in string_constants(path)
                  if value in RUN_FOLDER_NAMES and (name, value) not in OTHER_MEANINGS]
    assert not found, "ask a2d.rundir instead of spelling the run folder's names:\n" + "\n".join(found)


def test_rundir_spells_them_and_not_the_experiments_files():
    values = {value for _, value in string_constants(PACKAGE / "rundir.py")}
    assert {"best", "last", "trainer", "config.yaml", "metrics.jsonl", "state.json", "method.json"} <= values
    assert "wall.json" not in values and "cell.json" not in values


def test_the_exemptions_are_still_there():
    """An exemption whose word is gone from its file is stale: remove it."""
    for name, word in OTHER_MEANINGS:
        assert word in {value for _, value in string_constants(PACKAGE / name)}, (name, word)
