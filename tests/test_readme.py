"""The README is the user's manual: short, and its list of methods is what the registry prints."""
from __future__ import annotations

import re
from pathlib import Path

from a2d.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_LINES = 300


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"README.md has {len(lines)} lines; move narrative to docs/ (at most {MAX_LINES})"


def test_readme_methods_block_is_the_output_of_a2d_methods(capsys):
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- METHODS -->\n```text\n(.*?)```\n<!-- /METHODS -->", text, re.S)
    assert found, "README.md needs a ```text block between <!-- METHODS --> and <!-- /METHODS -->"
    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert found.group(1) == printed, "README's methods block differs from `a2d methods`: paste its output there"


def test_readme_links_to_files_that_exist():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (README.parent / target).exists(), f"README.md links to {target}, which does not exist"
