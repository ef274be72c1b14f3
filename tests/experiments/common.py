"""What the experiments tests share: the smoke grid, the command, and reading the markdown's tables."""
from __future__ import annotations

from pathlib import Path

import yaml

from a2d.cli import main

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "benchmarks" / "grids" / "smoke.yaml"  # tiny models, a few updates, 30 test sentences


def reproduce(argv: list[str]) -> int:
    """``a2d reproduce ARGV`` (what ``benchmarks/quality.py ARGV`` runs); its exit status."""
    return main(["reproduce", *argv])


def smoke_variant(tmp_path: Path, name: str, **changes) -> Path:
    """The smoke grid as ``tmp_path/NAME.yaml``, named NAME, for De-En only, without ablations, with ``changes``."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw.pop("ablations")
    raw.update(name=name, directions=["de-en"], **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def table(md: str, title: str) -> list[list[str]]:
    """The rows (cells stripped) of the markdown table under ``## title``, header first, separator dropped."""
    lines = md.split(f"## {title}", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def cell_bleu(info: dict, cell_id: str) -> float:
    return next(c["bleu"] for c in info["cells"] if c["id"] == cell_id)
