"""Folders a2d writes, used without a2d: ``benchmarks/plain_use.py`` run in a process where ``import a2d`` fails.

A run's ``best/`` (the stored tiny-r3 De-En teacher saved as a run would save it) with plain ``transformers``, and
its ``a2d export`` folders with plain ``ctranslate2`` + ``sentencepiece``, give a2d's translator output line for line,
greedy and with the beam the folder records (no decoding arguments for Hugging Face; for CTranslate2 only those
its README names); a source longer than the model's positions is cut alike. Each folder's README.md runs as written
and prints a2d's translation of its example line.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from a2d.config import read_yaml
from a2d.data.corpus import locate_corpus, read_parallel
from a2d.export import export
from a2d.models import load_model
from a2d.readme import SAMPLE
from a2d.rundir import RunDir
from a2d.settings import load_config
from a2d.translator import load_translator

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
STORED = REPO / "benchmarks" / "results" / "quality-tiny-r3-teachers" / "de-en"
SCRIPT = REPO / "benchmarks" / "plain_use.py"
WITHOUT_A2D = ("import sys, runpy; sys.modules['a2d'] = None; sys.argv[0] = {script!r}; "
               "runpy.run_path({script!r}, run_name='__main__')")


def quiet(*args):
    pass


def without_a2d(*args: str | Path) -> str:
    """Run plain_use.py with ``args`` where ``import a2d`` fails; its standard output."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_A2D.format(script=str(SCRIPT)), *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, data_root):
    """best/ of a run (the stored teacher saved by RunDir), its float32 and int8 exports, and the lines to translate:
    Multi30k test sentences and one of more pieces than the model's 256 positions."""
    root = tmp_path_factory.mktemp("plain")
    model, vocab = load_model(STORED)
    RunDir(root / "run").save("best", model, vocab, load_config(None, base=read_yaml(STORED / "config.yaml")))
    for quantization in ("float32", "int8"):
        export(root / "run" / "best", root / quantization, quantization=quantization, log=quiet)
    test = read_parallel(*locate_corpus("multi30k", "de", "en")["test"])[0]
    lines = test[:24] + [" ".join(test[24:54])]
    assert len(vocab.encode(lines[-1])) > 300
    (root / "lines.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root, lines


def test_the_script_does_not_import_a2d(tmp_path):
    """The guard is real: in that process a2d cannot be imported."""
    probe = tmp_path / "probe.py"
    probe.write_text("import a2d\n")
    done = subprocess.run([sys.executable, "-c", WITHOUT_A2D.format(script=str(probe))], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "import of a2d halted" in done.stderr
    plain_part = SCRIPT.read_text().split("def check(")[0]
    assert "import a2d" not in plain_part and "from a2d" not in plain_part  # only --check imports it


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_plain_libraries_give_a2ds_output(shipped, quantization, capsys):
    root, lines = shipped
    best, ct2 = root / "run" / "best", root / quantization
    hf_args = ("--hf", best) if quantization == "float32" else ()  # (the Hugging Face folder once)
    out = json.loads(without_a2d(*hf_args, "--ct2", ct2, "--lines", root / "lines.de"))
    hf, ct = load_translator(best), load_translator(ct2)
    assert hf.default_beam == ct.default_beam == 5
    for kind, beam in (("greedy", 1), ("beam", 5)):
        ours = ct.translate(lines, beam=beam)
        assert ct.truncated == 1 and "cut to their first 255" in capsys.readouterr().err
        assert out["ct2"][kind] == ours, kind
        if hf_args:
            assert out["hf"][kind] == hf.translate(lines, beam=beam) == ours, kind
    assert len(set(out["ct2"]["beam"])) == len(lines)


def test_the_readmes_run_as_written(shipped):
    """Each README's Python block, run as written without a2d, prints a2d's translation of its example line."""
    root, _ = shipped
    best, ct2 = root / "run" / "best", root / "int8"
    printed = json.loads(without_a2d("--hf", best, "--ct2", ct2, "--readme"))
    hf_printed = ast.literal_eval(printed["hf"].strip())  # print() of batch_decode's list
    assert hf_printed == load_translator(best).translate([SAMPLE])
    assert printed["ct2"].strip() == load_translator(ct2).translate([SAMPLE])[0]
    assert "a2d_export" not in (ct2 / "README.md").read_text()  # the plain lines read no a2d file
