"""a2d.provenance: where a2d runs from. From a checkout, grid results default to its benchmarks/results and its commit
is recorded; installed from a wheel (in site-packages), results default to ./benchmarks/results, never into
site-packages, and the version is recorded instead of the commit of whatever repository the command runs in."""
from __future__ import annotations

import importlib
from pathlib import Path

import a2d
from a2d import provenance
from a2d.experiments import command

REPO = Path(__file__).resolve().parents[1]


def test_the_checkout_is_found_from_its_layout(tmp_path):
    assert provenance.CHECKOUT == REPO == provenance.source_checkout()
    checkout = tmp_path / "clone"
    (checkout / "src" / "a2d").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    assert provenance.source_checkout(checkout / "src" / "a2d" / "provenance.py") == checkout
    (tmp_path / "pyproject.toml").write_text("")  # a project that holds the virtual environment
    wheel = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "a2d"
    wheel.mkdir(parents=True)
    assert provenance.source_checkout(wheel / "provenance.py") is None
    (tmp_path / "venv" / "lib" / "pyproject.toml").write_text("")
    assert provenance.source_checkout(wheel / "provenance.py") is None


def test_installed_from_a_wheel_results_stay_out_of_site_packages(monkeypatch):
    assert command.DEFAULT_RESULTS == REPO / "benchmarks" / "results"
    monkeypatch.setattr(provenance, "CHECKOUT", None)
    try:
        importlib.reload(command)
        assert command.DEFAULT_RESULTS == Path("benchmarks") / "results" and not command.DEFAULT_RESULTS.is_absolute()
        assert provenance.commit() == f"a2d {a2d.__version__}"
    finally:
        monkeypatch.undo()
        importlib.reload(command)
    assert command.DEFAULT_RESULTS == REPO / "benchmarks" / "results"
