"""a2d.experiments.speed (benchmarks/speed.py): decoder steps counted from the engines' output, forced lengths,
the targets computed from given rows, and wrong options refused with one line. Nothing here is timed: the
numbers of a run are only checked for what does not depend on the machine."""
from __future__ import annotations

import json

import pytest

from a2d.data.prepare import prepare
from a2d.experiments import speed
from a2d.utils import peak_rss_bytes
from tests.hub_models import corpus_text, hub_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_root):
    """Two random hub models of one tokenizer (a teacher and a smaller student) and a data directory with it."""
    root = tmp_path_factory.mktemp("speed")
    teacher = hub_folder(root / "teacher", init_std=0.5)
    student = root / "student"
    student.mkdir()
    for name in ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json"):  # the teacher's tokenizer
        (student / name).write_bytes((teacher / name).read_bytes())
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig.from_pretrained(teacher)
    config.encoder_layers, config.decoder_layers = 1, 1
    model = MarianMTModel(config)
    model.generation_config = MarianMTModel.from_pretrained(teacher).generation_config
    model.save_pretrained(student, safe_serialization=True)
    src, tgt = corpus_text(30)
    text = root / "text"
    text.mkdir()
    for split, rows in (("train", slice(0, 20)), ("valid", slice(20, 25)), ("test", slice(25, 30))):
        for lang, lines in (("de", src[rows]), ("en", tgt[rows])):
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = {s: (text / f"{s}.de", text / f"{s}.en") for s in ("train", "valid", "test")}
    prepare(root / "data", splits, "de", "en", tokenizer=teacher, log=quiet)
    return teacher, student, root / "data"


@pytest.mark.parametrize("engine", ["hf-fp32", "ct2-int8"])
def test_measure_counts_forced_decoder_steps(setup, tmp_path, engine):
    """measure() (in this process; the command runs it in a fresh one): with --force-length every sentence takes
    exactly L decoder steps at every beam, and the count is of the engine's steps."""
    teacher, _, data = setup
    folder = teacher
    if engine.startswith("ct2"):
        folder = tmp_path / "ct2"
        speed.export(teacher, folder, quantization="int8", log=quiet)
    r = speed.measure(engine, str(folder), str(data), "test", 1, [1, 3], 500, 2, force_length=6)
    assert set(r["runs"]) == {"beam1", "beam3"} and r["engine"] == engine and r["threads"] == 1
    for run in r["runs"].values():
        assert run["sentences"] == 5 and run["target_tokens"] == 5 * 6
    assert all(lat["sentences"] == 2 and lat["batch"] == 1 for lat in r["latency_ms"].values())
    free = speed.measure(engine, str(folder), str(data), "test", 1, [2], 500, 0, sentences=3)
    assert free["runs"]["beam2"]["sentences"] == 3 and free["latency_ms"]["beam2"]["sentences"] == 0


def test_measure_as_translators(setup, tmp_path):
    """``translators=True``: a ct2 engine on 2 threads runs as 2 translators of one thread, in its own row, with the
    plain row's outputs; Hugging Face has none."""
    teacher, _, data = setup
    folder = tmp_path / "ct2"
    speed.export(teacher, folder, quantization="int8", log=quiet)
    plain = speed.measure("ct2-int8", str(folder), str(data), "test", 2, [2], 40, 1)
    both = speed.measure("ct2-int8", str(folder), str(data), "test", 2, [2], 40, 1, translators=True)
    assert (plain["engine"], both["engine"], both["threads"]) == ("ct2-int8", "ct2-int8+translators", 2)
    assert both["runs"]["beam2"]["target_tokens"] == plain["runs"]["beam2"]["target_tokens"]
    assert both["runs"]["beam2"]["bleu"] == plain["runs"]["beam2"]["bleu"]
    with pytest.raises(ValueError, match="for the CTranslate2 engines"):
        speed.measure("hf-fp32", str(teacher), str(data), "test", 2, [2], 40, 1, translators=True)


def _row(model, engine, tok5, bleu5=30.0, threads=1, folder=4 * 2**20, tok1=None):
    runs = {"beam5": {"tokens_per_s": tok5, "bleu": bleu5, "chrf": 50.0, "sentences_per_s": 1.0}}
    if tok1 is not None:
        runs["beam1"] = {"tokens_per_s": tok1, "bleu": bleu5, "chrf": 50.0, "sentences_per_s": 1.0}
    return {"model": model, "engine": engine, "threads": threads, "runs": runs, "latency_ms": {},
            "peak_rss_mib": 300.0, "weights_bytes": folder // 2, "folder_bytes": folder}


def test_targets_from_given_rows():
    rows = [_row("teacher", "hf-fp32", 100, 40.0, folder=46 * 2**20),
            _row("teacher", "ct2-float32", 250, 40.0, folder=48 * 2**20),
            _row("teacher", "ct2-int8", 400, 39.9, folder=14 * 2**20),
            _row("teacher", "ct2-int8", 9999, 39.9, threads=2),  # 2 threads: not where the targets are read
            _row("A2D", "ct2-float32", 900, 39.5, folder=40 * 2**20),
            _row("A2D", "ct2-int8", 1250, 39.1, folder=12 * 2**20),
            _row("KD", "ct2-int8", 99999, 10.0)]  # not the target student
    got = {t["name"]: t for t in speed.targets(rows, "A2D")}
    assert list(got) == ["speed vs teacher CT2 int8", "speed vs teacher HF fp32", "int8 BLEU", "size"]
    assert got["speed vs teacher CT2 int8"]["value"] == 3.12 and got["speed vs teacher CT2 int8"]["met"] is True
    assert got["speed vs teacher HF fp32"]["value"] == 12.5 and got["speed vs teacher HF fp32"]["met"] is True
    assert got["int8 BLEU"]["value"] == -0.4 and got["int8 BLEU"]["met"] is False
    assert got["size"]["value"] == 0.25 and got["size"]["met"] is True  # 12 / 48 MiB: <= 1/4
    assert "1,250 / 400 tokens/s = 3.12x" in got["speed vs teacher CT2 int8"]["detail"]
    lines = speed.target_lines(speed.targets(rows, "A2D"))
    assert len(lines) == 4 and lines[2].endswith("-0.40 BLEU: MISSED") and lines[0].endswith(": met")

    rows[5] = _row("A2D", "ct2-int8", 1000, 39.4, folder=13 * 2**20)
    got = {t["name"]: t for t in speed.targets(rows, "A2D")}
    assert (got["speed vs teacher CT2 int8"]["met"], got["speed vs teacher HF fp32"]["met"]) == (False, True)
    assert got["int8 BLEU"]["met"] is True and got["size"]["met"] is False
    # forced lengths: BLEU is not judged; missing rows are named; no student: nothing judged
    got = {t["name"]: t for t in speed.targets(rows, "A2D", forced=True)}
    assert got["int8 BLEU"]["met"] is None and "--force-length" in got["int8 BLEU"]["detail"]
    got = {t["name"]: t for t in speed.targets([r for r in rows if r["engine"] != "hf-fp32"], "A2D")}
    assert got["speed vs teacher HF fp32"]["met"] is None
    assert "teacher hf-fp32 at beam 5, 1 thread" in got["speed vs teacher HF fp32"]["detail"]
    assert got["speed vs teacher CT2 int8"]["met"] is False
    assert [t["met"] for t in speed.targets(rows, None)] == [None]
    table = speed.table(rows)
    assert "| A2D | ct2-int8 | 1 | 5 | 1,000 | 2.50 |" in table  # x teacher: same engine, threads and beam


def test_a_run_writes_the_report(setup, tmp_path):
    """One short run (two fresh processes): the JSON, markdown and PNG, the settings and the commit of the package."""
    teacher, student, data = setup
    out = tmp_path / "res" / "speed-x"
    argv = ["--data", str(data), "--teacher", str(teacher), "--student", f"small={student}", "--target-student",
            "small", "--engines", "ct2-int8", "--beam", "2", "--threads", "1", "--force-length", "4",
            "--latency-sentences", "2", "--repeats", "2", "--out", str(out)]
    ballast = bytearray(768 * 2**20)  # this process is then far larger than either measuring one
    ballast[::4096] = b"x" * len(ballast[::4096])  # touched: resident
    parent = peak_rss_bytes()
    assert speed.main(argv) == 0
    del ballast
    report = json.loads(out.with_name("speed-x.json").read_text())
    assert report["commit"] == speed.commit() and report["settings"]["force_length"] == 4
    assert [(r["model"], r["engine"], r["threads"]) for r in report["results"]] == [("teacher", "ct2-int8", 1),
                                                                                   ("small", "ct2-int8", 1)]
    assert all(r["runs"]["beam2"]["target_tokens"] == 5 * 4 for r in report["results"])
    for run in (r["runs"]["beam2"] for r in report["results"]):  # the median of two passes is their mean
        assert len(run["passes_seconds"]) == 2 and abs(run["seconds"] - sum(run["passes_seconds"]) / 2) < 2e-3
    # each row's peak memory is its own process's, not inherited from the one that spawned it (ru_maxrss is)
    assert all(0 < r["peak_rss_mib"] * 2**20 < parent - 512 * 2**20 for r in report["results"])
    assert {t["name"]: t["met"] for t in report["targets"]}["speed vs teacher HF fp32"] is None
    md = out.with_name("speed-x.md").read_text()
    assert "small against teacher" in md and "forced to exactly 4 decoder steps" in md
    assert "the median of 2 timed passes" in md
    assert out.with_name("speed-x.png").stat().st_size > 0


@pytest.mark.parametrize("extra, message", [
    (["--beam", "0"], "--beam 0: must be at least 1"),
    (["--beam", "x"], "argument --beam: invalid int value: 'x'"),
    (["--threads", "1", "0"], "--threads 0: must be at least 1"),
    (["--engines", "hf-fp32", "ct2-int4"], "--engines ct2-int4: choose from hf-fp32, ct2-float32, ct2-int8"),
    (["--force-length", "0"], "--force-length 0: must be at least 1"),
    (["--repeats", "0"], "--repeats 0: must be at least 1"),
    (["--force-length", "128"], "--force-length 128: teacher"),
    (["--target-student", "A2D"], "--target-student A2D: not a --student name (they are small)"),
    (["--student", "nameless"], "--student nameless: give NAME=RUN"),
    (["--student", "teacher=x"], "the name 'teacher' is taken by the teacher"),
    (["--split", "dev"], "no 'dev' split"),
    (["--latency-sentences", "-1"], "--latency-sentences -1: must be at least 0"),
    (["--translators", "--engines", "hf-fp32"], "--translators: for the CTranslate2 engines, and --engines has none"),
    (["--translators", "--threads", "1"], "--translators: N translators of one thread for each --threads N above 1"),
])
def test_wrong_options_are_one_line(setup, tmp_path, capsys, extra, message):
    teacher, student, data = setup
    out = tmp_path / "speed-x"
    argv = ["--data", str(data), "--teacher", str(teacher), "--student", f"small={student}", "--out", str(out),
            *extra]
    assert speed.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("speed: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_not_a_model_is_one_line(setup, tmp_path, capsys):
    teacher, _, data = setup
    speed.export(teacher, tmp_path / "ct2", quantization="int8", log=quiet)
    for folder, message in ((tmp_path / "ct2", "a CTranslate2 export"), (tmp_path / "none", "not a model folder")):
        assert speed.main(["--data", str(data), "--teacher", str(folder), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o.json").exists()
