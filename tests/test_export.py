"""Hugging Face-standard model folders and ``a2d export`` (CTranslate2): parity with ``a2d translate``.

Uses the stored tiny-r3 De-En teacher (benchmarks/results/quality-tiny-r3-teachers/de-en, with a2d's
``sentencepiece.model`` and the Marian tokenizer files made from it) and tiny random models; nothing is downloaded.
"""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from a2d.cli import main
from a2d.data.corpus import locate_corpus, read_parallel
from a2d.data.vocab import Vocabulary
from a2d.evaluate import score, translate
from a2d.models import build_model, load_model
from a2d.rundir import RunDir
from a2d.settings import load_config
from tests.hub_models import corpus_text, hub_folder

pytestmark = pytest.mark.usefixtures("one_thread")
STORED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "quality-tiny-r3-teachers" / "de-en"
INT8_BLEU_TOLERANCE = 1.0  # int8 vs fp32 greedy BLEU on 300 test sentences (measured: -0.13)


@pytest.fixture(scope="module")
def test_text(data_root):
    src, ref = read_parallel(*locate_corpus("multi30k", "de", "en")["test"])
    return src[:300], ref[:300]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    out = tmp_path_factory.mktemp("exports")
    for q in ("float32", "int8"):
        assert main(["export", "--model", str(STORED), "--out", str(out / q), "--quantization", q]) == 0
    return out


def _hf(folder):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSeq2SeqLM.from_pretrained(folder).eval()


def test_run_folder_is_a_hugging_face_folder(tmp_path, test_text):
    """best/ written by a run loads with AutoTokenizer/AutoModelForSeq2SeqLM alone; generate() = a2d translate."""
    vocab = Vocabulary.load(STORED)
    cfg = load_config("tiny-student", ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"])
    model = build_model(cfg, len(vocab), seed=3)
    RunDir(tmp_path / "run").save("best", model, vocab, cfg)
    tok, hf = _hf(tmp_path / "run" / "best")
    sources = test_text[0][:24]
    mine, _ = load_model(tmp_path / "run")
    ours = [translate(mine, vocab, [s], beam=1)[0] for s in sources]  # one at a time: a2d's length limit per sentence
    theirs = []
    for s in sources:
        enc = tok(s, return_tensors="pt")
        with torch.no_grad():
            out = hf.generate(**enc, num_beams=1, max_new_tokens=int(1.2 * enc["input_ids"].shape[1] + 10))
        theirs.append(tok.decode(out[0], skip_special_tokens=True))
    assert ours == theirs
    assert [tok(s, add_special_tokens=False)["input_ids"] for s in sources] == vocab.encode_batch(sources)


def test_trained_model_generates_as_a2d_translate(test_text):
    """The stored teacher, as it is shipped: plain batched generate() = a2d translate, greedy and (no decoding
    arguments) beam."""
    tok, hf = _hf(STORED)
    sources = test_text[0][:40]
    batch = tok(sources, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        greedy, beam = hf.generate(**batch, num_beams=1), hf.generate(**batch)
    model, vocab = load_model(STORED)
    assert tok.batch_decode(greedy, skip_special_tokens=True) == translate(model, vocab, sources, beam=1)
    assert tok.batch_decode(beam, skip_special_tokens=True) == translate(model, vocab, sources, beam=5)


@pytest.mark.parametrize("direction", ["de-en", "en-de"])
def test_stored_teachers_load_bare(direction):
    """The stored tiny-r3 teachers (the demo's among them) load with AutoTokenizer alone, encode as a2d does, cut
    to the model's positions, and record a2d's beam; the demo's checked file list has the tokenizer's files (a
    downloaded teacher loads bare too), and pyproject's package data takes every file of the folder."""
    from a2d.recipes.demo import TEACHER_FILES
    from a2d.tokenizer import MarianVocabulary

    folder = STORED.parent / direction
    tok = _hf(folder)[0]
    vocab = Vocabulary.load(folder)
    text = "Ein Mann fährt mit dem Fahrrad über eine Brücke." if direction == "de-en" else "A man rides a bike."
    assert tok(text)["input_ids"] == vocab.encode(text) + [vocab.eos_id]
    config = json.loads((folder / "config.json").read_text())
    assert tok.model_max_length == config["max_position_embeddings"] == 256
    assert len(tok(text * 100, truncation=True)["input_ids"]) == 256
    generation = json.loads((folder / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["early_stopping"], generation["max_length"]) == (5, True, 256)
    listed = set(TEACHER_FILES)
    assert set(MarianVocabulary.FILES) - {"target_vocab.json"} <= listed <= {p.name for p in folder.iterdir()}
    manifest = json.loads((folder / "teacher.json").read_text())
    assert set(manifest["files"]) == set(TEACHER_FILES)
    pyproject = (STORED.parents[3] / "pyproject.toml").read_text()
    assert '"assets/demo-teacher/*"' in pyproject


def test_run_folder_records_how_a2d_decodes(tmp_path):
    """A run's best/ records a2d's decoding: num_beams (the config's), early_stopping, the positions as max_length
    and as the tokenizer's model_max_length (a long source truncated by the tokenizer then fits the model), a
    README.md that names the folder, its beam and positions; a2d translate's default beam is the folder's."""
    from a2d.translator import load_translator

    vocab = Vocabulary.load(STORED)
    cfg = load_config("tiny-student", ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1",
                                       "max_positions=40", "num_beams=3"])
    RunDir(tmp_path / "run").save("best", build_model(cfg, len(vocab), seed=3), vocab, cfg)
    best = tmp_path / "run" / "best"
    generation = json.loads((best / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["early_stopping"], generation["max_length"]) == (3, True, 40)
    tok, hf = _hf(best)
    assert tok.model_max_length == 40
    batch = tok(["Ein Hund rennt über die Wiese. " * 30], return_tensors="pt", truncation=True)
    assert batch["input_ids"].shape[1] == 40
    with torch.no_grad():
        hf.generate(**batch, num_beams=1, max_new_tokens=2)  # (an IndexError when the tokenizer said 512)
    readme = (best / "README.md").read_text()
    assert f'AutoTokenizer.from_pretrained("{best.as_posix()}")' in readme
    assert "beam 3 with early stopping" in " ".join(readme.split()) and "model's 40 positions" in " ".join(readme.split())
    assert load_translator(tmp_path / "run").default_beam == 3
    default = load_config("tiny-student", ["d_model=32", "ffn_dim=64"])
    assert build_model(default, len(vocab)).generation_config.num_beams == 5  # num_beams=0: a2d's default


def test_float32_export_matches_hugging_face(exports, test_text):
    from a2d.translator import CT2Translator

    model, vocab = load_model(STORED)
    sources = test_text[0][:48]
    ct2 = CT2Translator(exports / "float32")
    assert ct2.translate(sources, beam=1) == translate(model, vocab, sources, beam=1)
    assert ct2.translate(sources[:16], beam=5) == translate(model, vocab, sources[:16], beam=5)


def test_two_vocabulary_export_matches_hugging_face(tmp_path):
    """A Marian folder with separate source and target vocabularies (vocab.json and target_vocab.json, as
    OPUS-MT's two-vocabulary models): CTranslate2 gets each side's own, and the float32 export decodes as
    Hugging Face does, string for string."""
    from a2d.export import export
    from a2d.shortlist import ct2_vocabularies
    from a2d.translator import CT2Translator

    # large random weights, so that the output depends on the source (at init_std 0.02 every source gives one)
    teacher = hub_folder(tmp_path / "teacher", separate_vocabs=True, init_std=0.5)
    export(teacher, tmp_path / "ct2", quantization="float32", log=lambda *a: None)
    # each side's own pieces; the target's with </s> and <pad> (the decoder's start) first, for the shortlist
    # (export.front_order), which ct2_vocabularies undoes
    in_model_order = ct2_vocabularies(tmp_path / "ct2")
    for side, (hf_name, ct2_name) in enumerate((("vocab.json", "source_vocabulary.json"),
                                                ("target_vocab.json", "target_vocabulary.json"))):
        pieces = sorted((p := json.loads((teacher / hf_name).read_text(encoding="utf-8"))), key=p.get)
        assert in_model_order[side] == pieces
        stored = json.loads((tmp_path / "ct2" / ct2_name).read_text(encoding="utf-8"))
        assert stored == (pieces if side == 0 else ["</s>", "<pad>", *pieces[1:-1]])
    assert json.loads((tmp_path / "ct2" / "a2d_export.json").read_text())["suppress_tokens"] == ["<pad>"]
    model, vocab = load_model(teacher)
    sources = corpus_text(40)[0]
    hyps = translate(model, vocab, sources, beam=1)
    assert len(set(hyps)) > 30
    ct2 = CT2Translator(tmp_path / "ct2")
    assert ct2.translate(sources, beam=1) == hyps
    assert ct2.translate(sources[:12], beam=4) == translate(model, vocab, sources[:12], beam=4)


def test_export_decodes_as_a2d_with_plain_ctranslate2(tmp_path):
    """What a plain ctranslate2.Translator needs is in the model: it closes the source with </s> itself
    (add_source_eos) and never generates the ids the generation config bars (here a <pad> made the likeliest token
    of all: without its output bias every hypothesis would be <pad>s); the export says its beam and positions, and
    its README.md uses the folder's files with them."""
    from transformers import MarianMTModel

    from a2d.export import export
    from a2d.translator import CT2Translator

    teacher = hub_folder(tmp_path / "teacher", init_std=0.5)  # records num_beams 4, <pad> barred, 128 positions
    model = MarianMTModel.from_pretrained(teacher)
    pad = model.config.pad_token_id
    with torch.no_grad():
        model.final_logits_bias[0, pad] = 50.0
    model.save_pretrained(teacher, safe_serialization=True)
    export(teacher, tmp_path / "ct2", quantization="float32", log=lambda *a: None)
    ct2 = tmp_path / "ct2"
    assert json.loads((ct2 / "config.json").read_text())["add_source_eos"] is True
    settings = json.loads((ct2 / "a2d_export.json").read_text())
    assert (settings["format"], settings["beam"], settings["max_position_embeddings"]) == (2, 4, 128)
    assert json.loads((ct2 / "tokenizer_config.json").read_text())["model_max_length"] == 128
    ours = CT2Translator(ct2)
    assert ours.default_beam == 4
    sources = corpus_text(16)[0]
    sources.append(" ".join(sources))  # more pieces than the model's positions: cut by both
    model, vocab = load_model(teacher)
    assert ours.translate(sources, beam=1) == translate(model, vocab, sources, beam=1)
    # a random model runs to the length limit: give a2d the one plain CTranslate2 gets (126: HF's forced </s>)
    length = {"max_len_a": 0.0, "max_len_b": 127}
    for beam in (1, 4):
        plain = ours.translator.translate_batch([vocab.pieces(vocab.encode(s)) for s in sources], beam_size=beam,
                                                max_input_length=128, max_decoding_length=126)
        assert not any("<pad>" in r.hypotheses[0] for r in plain)
        hyps = ours.translate(sources, beam=beam, **length)
        assert [ours.detokenize(vocab.piece_ids(r.hypotheses[0])) for r in plain] == hyps
    readme = (ct2 / "README.md").read_text()
    for needed in (f'ctranslate2.Translator("{ct2.as_posix()}")', f'{ct2.as_posix()}/source.spm"', "beam_size=4",
                   "max_input_length=128", "max_decoding_length=127", "`<pad>`", '!= "<unk>"'):
        assert needed in readme, needed


def test_int8_export_within_tolerance(exports, test_text):
    from a2d.translator import CT2Translator
    from a2d.export import folder_size

    model, vocab = load_model(STORED)
    sources, refs = test_text
    fp32 = score(translate(model, vocab, sources, beam=1), refs, n_bootstrap=1)["bleu"]
    int8 = score(CT2Translator(exports / "int8").translate(sources, beam=1), refs, n_bootstrap=1)["bleu"]
    assert abs(int8 - fp32) <= INT8_BLEU_TOLERANCE
    assert folder_size(exports / "int8", weights_only=True) <= 0.3 * folder_size(exports / "float32", weights_only=True)
    settings = json.loads((exports / "int8" / "a2d_export.json").read_text())
    assert settings["quantization"] == "int8" and settings["source"] == str(STORED.resolve())


def test_translate_and_evaluate_take_an_export(exports, tmp_path, monkeypatch, capsys, data_root):
    from a2d.data.prepare import prepare

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Ein Mann fährt Fahrrad.\n\nZwei Hunde.\n".encode())))
    assert main(["translate", "--model", str(exports / "int8"), "--beam", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1] == "" and "dog" in lines[2]
    data = tmp_path / "data"
    splits = locate_corpus("multi30k", "de", "en")
    prepare(data, splits, "de", "en", max_train=100, vocab=STORED / "sentencepiece.model", log=lambda *a: None)
    assert main(["evaluate", "--model", str(exports / "int8"), "--data", str(data), "--beam", "1",
                 "--translators", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^BLEU [\d.]+ \(95% CI [\d.]+-[\d.]+\)  chrF [\d.]+ \(95% CI [\d.]+-[\d.]+\)  1000 sentences",
                     printed, re.M), printed


def one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("a2d: error: ")
    return err


def test_export_refuses_bad_input(exports, tmp_path, capsys):
    import ctranslate2

    assert "already exists" in one_line_error(["export", "--model", STORED, "--out", exports / "int8"], capsys)
    (tmp_path / "empty").mkdir()
    assert "not a model folder" in one_line_error(["export", "--model", tmp_path / "empty", "--out", tmp_path / "x"],
                                                  capsys)
    bart = tmp_path / "bart"
    bart.mkdir()
    (bart / "config.json").write_text(json.dumps({"model_type": "bart"}))
    err = one_line_error(["export", "--model", bart, "--out", tmp_path / "y"], capsys)
    assert "a bart model" in err and "Marian" in err
    if "float16" not in ctranslate2.get_supported_compute_types("cpu"):
        err = one_line_error(["export", "--model", STORED, "--out", tmp_path / "z", "--quantization", "float16"], capsys)
        assert "cannot run it" in err
    assert not any(p.name in ("x", "y", "z") for p in tmp_path.iterdir())


def test_export_checks_where_it_writes_before_the_work(tmp_path, monkeypatch, capsys):
    """An --out that cannot be made (a file above it, a folder that cannot be written) is refused before the model
    is loaded, in one line, and nothing is left there (it was a traceback after the load)."""
    import tempfile

    import a2d.export

    loaded = []
    monkeypatch.setattr(a2d.export, "load_model", lambda *a, **k: loaded.append(a) or load_model(*a, **k))
    (tmp_path / "file").write_text("x")
    err = one_line_error(["export", "--model", STORED, "--out", tmp_path / "file" / "sub" / "ct2"], capsys)
    assert f"{tmp_path / 'file'} is a file, not a folder" in err
    read_only = tmp_path / "read-only"
    read_only.mkdir()

    def refused(make):
        def in_read_only(*args, **kwargs):
            folder = kwargs.get("dir", args[2] if len(args) > 2 else None)
            if folder is not None and Path(folder) == read_only:
                raise PermissionError(13, "Permission denied")
            return make(*args, **kwargs)
        return in_read_only

    monkeypatch.setattr(tempfile, "mkstemp", refused(tempfile.mkstemp))
    monkeypatch.setattr(tempfile, "mkdtemp", refused(tempfile.mkdtemp))
    err = one_line_error(["export", "--model", STORED, "--out", read_only / "ct2"], capsys)
    assert f"cannot write in {read_only} (Permission denied)" in err
    assert loaded == [] and list(read_only.iterdir()) == [] and (tmp_path / "file").read_text() == "x"


def test_export_of_a_run_names_the_checkpoint(tmp_path, capsys):
    """A run before its first checkpoint is a run (not "run a2d train to make one"); a run with last/ but no best/
    (still training, never validated) is not exported silently from last/: it asks for RUN/last."""
    from a2d.config import save_config

    vocab = Vocabulary.load(STORED)
    cfg = load_config("tiny-student", ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"])
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_config(cfg, run.config_file)
    run.metrics_file.write_text("")
    out = tmp_path / "ct2"
    err = one_line_error(["export", "--model", run.path, "--out", out], capsys)
    assert f"{run.path}: a run with no saved model yet" in err and "to make one" not in err
    run.save("last", build_model(cfg, len(vocab), seed=1), vocab, cfg)
    err = one_line_error(["export", "--model", run.path, "--out", out], capsys)
    assert f"--model {run.path}: the run has no best/ yet" in err and f"give --model {run.last} to export" in err
    assert not out.exists()
    assert main(["export", "--model", str(run.last), "--out", str(out), "--quantization", "float32"]) == 0
    assert json.loads((out / "a2d_export.json").read_text())["source"] == str(run.last.resolve())


def test_an_export_without_its_model_bin_is_called_incomplete(exports, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "ct2"
    shutil.copytree(exports / "int8", broken)
    (broken / "model.bin").unlink()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Ein Hund.\n")))
    err = one_line_error(["translate", "--model", broken], capsys)
    assert f"{broken}: an incomplete CTranslate2 export (a2d_export.json but no model.bin)" in err
    assert "needs the Hugging Face model folder" not in err
