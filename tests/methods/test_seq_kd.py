"""Sequence-level KD: ``a2d distill-data`` (teacher translations as train targets, resumable) and ``seq-kd``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file

from a2d.data.corpus import locate_corpus, read_lines
from a2d.data.prepare import ParallelData, load_meta, prepare
from a2d.data.vocab import Vocabulary
from a2d.evaluate import translate
from a2d.export import export
from a2d.methods import METHODS, Progress
from a2d.methods.seq_kd import SequenceKD, check_data
from a2d.models import load_model
from a2d.recipes import distill_data as dd
from a2d.recipes.distill import distill
from a2d.recipes.distill_data import distill_data, work_dir_for
from a2d.settings import load_config
from a2d.utils import UserError, sha256_file
from tests.methods.test_kd import TINY, check_trains
from tests.tiny import quiet, save_tiny_teacher, tiny_corpus

pytestmark = pytest.mark.usefixtures("one_thread")

CHUNK, BEAM = 64, 2  # 200 train sentences -> chunks of 64, 64, 64, 8


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, data_root):
    return tiny_corpus(tmp_path_factory.mktemp("seqkd") / "m30k", 200)


def save_teacher(path, data_dir, seed=7):
    return save_tiny_teacher(path, data_dir, TINY, seed)


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "t", tiny_data)


@pytest.fixture(scope="module")
def expected(tiny_data, teacher):
    """The teacher's translate() output of the train sources, decoded chunk by chunk as distill_data does."""
    model, _ = load_model(teacher)
    sources = ParallelData.load(tiny_data, "train").src_text
    vocab = Vocabulary.load(tiny_data)
    hyps = []
    for start in range(0, len(sources), CHUNK):
        hyps += translate(model, vocab, sources[start:start + CHUNK], beam=BEAM)
    return hyps


@pytest.fixture(scope="module")
def distilled(tiny_data, teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "m30k-kd"
    meta = distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, threads=1, log=quiet)
    return out, meta


# ------------------------------------------------------------------------------------------------
def test_registered_and_no_terms():
    assert METHODS["seq-kd"] is SequenceKD
    assert not SequenceKD.needs_teacher and SequenceKD.needs == frozenset()
    assert "distill-data" in SequenceKD.summary
    method = SequenceKD(load_config(None, ["method=seq-kd"]).settings, None, None)
    assert method.loss_terms({}, None, None, Progress(1, 0)) == {} and method.weights(Progress(1, 0)) == {}
    assert list(method.parameters()) == []


def test_seq_kd_trains_tiny_student_on_ce():
    assert check_trains("seq-kd", with_teacher=False) == {}


def test_check_data(tiny_data, distilled):
    with pytest.raises(UserError, match="distill-data") as err:
        check_data(load_meta(tiny_data), tiny_data)
    assert "\n" not in str(err.value) and str(tiny_data) in str(err.value)
    check_data(load_meta(distilled[0]))
    SequenceKD.check_data(load_meta(distilled[0]))


def test_cli_names_the_command_that_makes_distilled_data(tiny_data, tmp_path, capsys):
    """The component raises NotDistilledData; the CLI's one line says which command to run."""
    from a2d.cli import main

    argv = ["distill", "--data", str(tiny_data), "--method", "seq-kd", "--preset", "tiny-student",
            "--out", str(tmp_path / "run"), *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `a2d distill-data --teacher RUN --data DIR --out DIR2`" in err
    assert err.startswith("a2d: error: --method seq-kd trains on the teacher's translations")
    assert not (tmp_path / "run").exists()


def test_distilled_directory(tiny_data, teacher, expected, distilled):
    out, meta = distilled
    assert not work_dir_for(out).exists()
    old, new = ParallelData.load(tiny_data, "train"), ParallelData.load(out, "train")
    assert meta == load_meta(out)
    # every hypothesis of a tiny teacher fits max_len 250: nothing dropped
    assert meta["splits"]["train"]["kept"] == len(old) == len(new) and meta["splits"]["train"]["dropped_long"] == 0
    assert new.src_text == old.src_text
    assert read_lines(out / "train.de") == read_lines(tiny_data / "train.de")
    assert new.tgt_text == expected
    assert meta["splits"]["train"]["empty_hypotheses"] == sum(1 for h in expected if not h)
    # the train ids are the prepare encoding of the new text; the sources' ids are unchanged
    vocab = Vocabulary.load(out)
    assert [new[i][1] for i in range(len(new))] == vocab.encode_batch(expected)
    assert [new[i][0] for i in range(len(new))] == [old[i][0] for i in range(len(old))]
    # valid/test and the vocabulary are copied unchanged
    for name in ("sentencepiece.model", "valid.de", "valid.en", "valid.safetensors", "test.de", "test.en",
                 "test.safetensors"):
        assert sha256_file(out / name) == sha256_file(tiny_data / name), name
    src = load_meta(tiny_data)
    assert meta["splits"]["valid"] == src["splits"]["valid"] and meta["vocab_size"] == src["vocab_size"]
    assert meta["distilled_from"]["teacher"] == str(teacher) and meta["distilled_from"]["beam"] == BEAM
    assert meta["distilled_from"]["teacher_sha256"] == sha256_file(teacher / "model.safetensors")


@pytest.mark.parametrize("engine", ["hf", "ct2-float32"])
def test_interrupted_run_resumes(tiny_data, teacher, expected, distilled, tmp_path, monkeypatch, engine):
    out = tmp_path / "kd-data"
    calls = []
    real = dd.translate_chunk

    def failing(translator, sources, **kw):
        calls.append(list(sources))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(translator, sources, **kw)

    monkeypatch.setattr(dd, "translate_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, engine=engine, threads=1, log=quiet)
    assert not out.exists()
    work = work_dir_for(out)
    progress = json.loads((work / "progress.json").read_text())
    assert progress["done"] == CHUNK and progress["engine"] == engine and progress["decoder_steps"] > 0
    assert read_lines(work / "hypotheses.txt") == expected[:CHUNK]
    # a torn write after the last finished chunk is cut off on resume
    with open(work / "hypotheses.txt", "a", encoding="utf-8") as f:
        f.write("half a chunk\nand a torn li")

    sources = ParallelData.load(tiny_data, "train").src_text
    calls.clear()
    monkeypatch.setattr(dd, "translate_chunk", lambda translator, src, **kw: calls.append(list(src))
                        or real(translator, src, **kw))
    messages = []
    # CTranslate2 resumes on two cores: two translators of one thread, decoding batches at once, alike
    cores = 1 if engine == "hf" else 2
    meta = distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, engine=engine, threads=cores,
                        log=messages.append)
    assert calls == [sources[s:s + CHUNK] for s in range(CHUNK, len(sources), CHUNK)]
    assert any("resuming" in m for m in messages)
    assert any(("1 thread(s)" if engine == "hf" else "2 translator(s) of 1 thread") in m for m in messages)
    assert not work.exists()
    assert ParallelData.load(out, "train").tgt_text == expected
    a, b = load_file(str(out / "train.safetensors")), load_file(str(distilled[0] / "train.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    assert meta["splits"] == distilled[1]["splits"]
    # the steps of both runs: every hypothesis's output ids, as one uninterrupted run counts them
    assert meta["distilled_from"]["decoder_steps"] == distilled[1]["distilled_from"]["decoder_steps"]
    assert meta["distilled_from"]["engine"] == engine


def test_resume_refuses_other_settings(tiny_data, teacher, tmp_path, monkeypatch):
    out = tmp_path / "kd-data"

    def stop(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(dd, "translate_chunk", lambda translator, src, **kw: (["x"] * len(src), 0))
    monkeypatch.setattr(dd, "write_split", stop)
    with pytest.raises(KeyboardInterrupt):
        distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, threads=1, log=quiet)
    with pytest.raises(UserError, match="beam"):
        distill_data(teacher, tiny_data, out, beam=BEAM + 1, chunk=CHUNK, threads=1, log=quiet)
    with pytest.raises(UserError, match="another engine; rerun it with the same teacher, data_dir, engine and beam"):
        distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, engine="ct2-int8", threads=1, log=quiet)
    progress = work_dir_for(out) / "progress.json"  # one written before the engine was recorded: Hugging Face's
    old = json.loads(progress.read_text())
    del old["engine"]
    progress.write_text(json.dumps(old))
    with pytest.raises(KeyboardInterrupt):
        distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, threads=1, log=quiet)
    with pytest.raises(UserError, match="another engine"):
        distill_data(teacher, tiny_data, out, beam=BEAM, chunk=CHUNK, engine="ct2-float32", threads=1, log=quiet)


def test_empty_and_long_hypotheses(tiny_data, teacher, tmp_path, monkeypatch):
    """Empty hypotheses keep their pair and are counted; pairs with a hypothesis over max_len are dropped."""
    sources = ParallelData.load(tiny_data, "train").src_text
    fake = {s: ("" if i % 7 == 0 else "ein Hund " * 200 if i % 11 == 0 else f"hyp {i}") for i, s in enumerate(sources)}
    monkeypatch.setattr(dd, "translate_chunk", lambda translator, src, **kw: ([fake[s] for s in src], 0))
    meta = distill_data(teacher, tiny_data, tmp_path / "out", beam=BEAM, chunk=CHUNK, threads=1, log=quiet)
    keep = [i for i in range(len(sources)) if not (i % 11 == 0 and i % 7 != 0)]
    data = ParallelData.load(tmp_path / "out", "train")
    assert data.src_text == [sources[i] for i in keep]
    assert data.tgt_text == [fake[sources[i]] for i in keep]
    n_empty = sum(1 for i in range(len(sources)) if i % 7 == 0)
    assert meta["splits"]["train"] == {"lines": len(sources), "kept": len(keep), "dropped_empty": 0,
                                       "dropped_long": len(sources) - len(keep), "empty_hypotheses": n_empty}


def test_errors(tiny_data, teacher, distilled, tmp_path):
    other = tmp_path / "other"
    prepare(other, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=300, max_train=100, log=quiet)
    with pytest.raises(UserError, match="another vocabulary"):
        distill_data(teacher, other, tmp_path / "x", log=quiet)
    with pytest.raises(UserError, match="already exists"):
        distill_data(teacher, tiny_data, distilled[0], log=quiet)
    with pytest.raises(UserError, match="^beam=0: must be at least 1$"):
        distill_data(teacher, tiny_data, tmp_path / "y", beam=0, log=quiet)
    assert not (tmp_path / "x").exists() and not work_dir_for(tmp_path / "x").exists()


def test_ctranslate2_engines(tiny_data, teacher, expected, distilled, tmp_path):
    """CTranslate2 float32 gives the Hugging Face engine's targets string for string, from the model folder
    (exported on the fly into a temporary folder) or from an a2d export folder (its own quantization by default);
    int8 decodes too; meta.json records the engine."""
    messages = []
    meta = distill_data(teacher, tiny_data, tmp_path / "f32", beam=BEAM, chunk=CHUNK, engine="ct2-float32",
                        threads=1, log=messages.append)
    assert ParallelData.load(tmp_path / "f32", "train").tgt_text == expected
    assert meta["distilled_from"]["engine"] == "ct2-float32" and meta["distilled_from"]["threads"] == 1
    assert meta["distilled_from"]["teacher_sha256"] == distilled[1]["distilled_from"]["teacher_sha256"]
    assert meta["distilled_from"]["decoder_steps"] == distilled[1]["distilled_from"]["decoder_steps"]
    assert distilled[1]["distilled_from"]["engine"] == "hf"
    folder = next(m for m in messages if m.startswith("exporting")).split(" in ")[1].split(" (")[0]
    assert not Path(folder).exists()  # the temporary export is gone
    with open(tmp_path / "f32" / "meta.json", encoding="utf-8") as f:
        assert json.load(f)["distilled_from"]["engine"] == "ct2-float32"

    export(teacher, tmp_path / "t-f32", quantization="float32", log=quiet)
    meta = distill_data(tmp_path / "t-f32", tiny_data, tmp_path / "f32b", beam=BEAM, chunk=CHUNK, threads=1, log=quiet)
    assert meta["distilled_from"]["engine"] == "ct2-float32"
    assert ParallelData.load(tmp_path / "f32b", "train").tgt_text == expected
    meta = distill_data(tmp_path / "t-f32", tiny_data, tmp_path / "i8", beam=BEAM, chunk=CHUNK, engine="ct2-int8",
                        threads=1, log=quiet)
    assert meta["distilled_from"]["engine"] == "ct2-int8" and len(ParallelData.load(tmp_path / "i8", "train")) == 200


def test_wrong_engine_options_are_one_line(tiny_data, teacher, tmp_path, capsys):
    from a2d.cli import main

    export(teacher, tmp_path / "t-i8", quantization="int8", log=quiet)
    out = tmp_path / "out"
    base = ["distill-data", "--data", str(tiny_data), "--out", str(out)]
    for extra, message in (
            (["--teacher", str(teacher), "--engine", "ct2"], "--engine ct2: choose from hf, ct2-float32, ct2-int8"),
            (["--teacher", str(teacher), "--threads", "0"], "--threads 0: must be at least 1"),
            (["--teacher", str(tmp_path / "t-i8"), "--engine", "hf"], "--engine hf: --teacher"),
            (["--teacher", str(tmp_path / "t-i8"), "--engine", "ct2-float32"], "holds int8 weights"),
            (["--teacher", str(teacher), "--engine", "ct2-int8", "--cache-topk", "4"],
             "--engine: not used with --cache-topk"),
            (["--teacher", str(teacher), "--threads", "2", "--cache-topk", "4"], "--threads: not used with --cache-topk")):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists() and not work_dir_for(out).exists()


def test_seq_kd_distills_on_distilled_data(distilled, tmp_path):
    cfg = load_config("tiny-student", TINY + ["method=seq-kd", "max_steps=2", "max_tokens=512", "log_every=1",
                                              "warmup_updates=1"])
    result = distill(cfg, distilled[0], tmp_path / "run", teacher_path=None, log=quiet)
    assert result.state.update == 2
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["type"] == "train"]
    assert len(train) == 2 and all(torch.isfinite(torch.tensor(x["loss"])) and x["loss"] == x["ce"] for x in train)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
