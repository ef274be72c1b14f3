"""A teacher you bring: tiny random Marian models in the hub layout (OPUS-MT's), the three vocabulary layouts
(one SentencePiece model; separate source.spm and target.spm over one vocab.json; or each with its own,
vocab.json and target_vocab.json) and tied or untied embeddings. On each: prepare the data with its tokenizer, score it, distill two updates with a2d and kd,
translate, export."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from a2d.cli import main
from a2d.config import read_yaml
from a2d.settings import load_config
from a2d.data.prepare import prepare
from a2d.data.vocab import Vocabulary
from a2d.evaluate import evaluate_model, translate
from a2d.models import build_model, load_model
from a2d.recipes.distill import distill
from a2d.settings import load_config
from a2d.utils import UserError
from tests.hub_models import corpus_text, hub_folder

pytestmark = pytest.mark.usefixtures("one_thread")
VARIANTS = {
    "shared-tied": dict(shared_vocab=True, tied=True),
    "separate-untied": dict(shared_vocab=False, tied=False, activation_function="relu", scale_embedding=False,
                            encoder_ffn_dim=48),
    "two-vocabularies": dict(separate_vocabs=True, tied=True),
}
STUDENT = ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1", "encoder_attention_heads=2",
           "decoder_attention_heads=2", "max_tokens=512", "max_steps=2", "valid_max_sentences=8", "max_positions=128",
           "log_every=1", "warmup_updates=2"]


def quiet(*args):
    pass


def _split_files(folder: Path, n_train: int = 200, n_valid: int = 24) -> dict:
    src, tgt = corpus_text(n_train + n_valid)
    folder.mkdir()
    files = {}
    for split, rows in (("train", slice(0, n_train)), ("valid", slice(n_train, None))):
        for lang, lines in (("de", src[rows]), ("en", tgt[rows])):
            (folder / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        files[split] = (folder / f"{split}.de", folder / f"{split}.en")
    return files


@pytest.fixture(scope="module", params=list(VARIANTS))
def hub(request, tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp(request.param)
    teacher = hub_folder(root / "teacher", **VARIANTS[request.param])
    data = root / "data"
    prepare(data, _split_files(root / "text"), "de", "en", tokenizer=teacher, log=quiet)
    return teacher, data


def test_prepare_with_the_teachers_tokenizer(hub):
    teacher, data = hub
    meta = json.loads((data / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "MarianVocabulary" and meta["tokenizer"]["unknown_rate"]["src"] < 0.01
    assert (data / "source.spm").read_bytes() == (teacher / "source.spm").read_bytes()
    assert (data / "target.spm").read_bytes() == (teacher / "target.spm").read_bytes()
    if (teacher / "target_vocab.json").exists():
        assert (data / "target_vocab.json").read_bytes() == (teacher / "target_vocab.json").read_bytes()
    assert not (data / "sentencepiece.model").exists()


def test_student_takes_the_teachers_bad_words(hub, tmp_path):
    """The teacher's ``bad_words_ids`` (OPUS-MT's ``[[<pad>]]``: the decoder starts from ``<pad>``, which is never
    to be generated) is part of the vocabulary layout the data directory carries, and a student built on it
    has it in its generation config; a data directory prepared before it was (no such key) implies it."""
    teacher, data = hub
    bad = json.loads((teacher / "generation_config.json").read_text())["bad_words_ids"]
    assert bad == [[json.loads((teacher / "config.json").read_text())["pad_token_id"]]]
    assert json.loads((data / "a2d_tokenizer.json").read_text())["bad_words_ids"] == bad
    cfg = load_config("tiny-student", STUDENT)
    vocab = Vocabulary.load(data)
    student = build_model(cfg, len(vocab), layout=vocab.layout)
    assert student.generation_config.bad_words_ids == bad
    assert getattr(student.config, "bad_words_ids", None) is None  # a generation setting, not the model's
    old = tmp_path / "old-data"
    old.mkdir()
    for path in data.iterdir():
        if path.is_file():
            (old / path.name).write_bytes(path.read_bytes())
    layout = json.loads((old / "a2d_tokenizer.json").read_text())
    del layout["bad_words_ids"]
    (old / "a2d_tokenizer.json").write_text(json.dumps(layout))
    assert Vocabulary.load(old).layout["bad_words_ids"] == bad
    assert build_model(cfg, 100).generation_config.bad_words_ids is None  # a2d's own vocabulary: none


def test_score_distill_translate(hub, tmp_path, monkeypatch, capsys):
    from transformers import AutoTokenizer

    teacher, data = hub
    result = evaluate_model(teacher, data, split="valid", beam=2, progress=False)
    assert result["sentences"] == 24 and 0 <= result["bleu"] <= 100
    t_config = json.loads((teacher / "config.json").read_text())
    for method in ("a2d", "kd"):
        out = tmp_path / method
        run = distill(load_config("tiny-student", STUDENT + [f"method={method}"]), data, out, teacher, log=quiet)
        assert run.state.update == 2
        student, vocab = load_model(out)
        for key in ("vocab_size", "decoder_vocab_size", "pad_token_id", "eos_token_id", "decoder_start_token_id",
                    "share_encoder_decoder_embeddings", "tie_word_embeddings"):
            assert getattr(student.config, key) == t_config[key], key
        assert student.config.encoder_layers == 1 and student.config.d_model == 32
        assert student.generation_config.bad_words_ids == [[t_config["pad_token_id"]]]  # as the teacher's
        assert AutoTokenizer.from_pretrained(out / "best").pad_token_id == t_config["pad_token_id"]
        hyps = translate(student, vocab, ["Ein Hund läuft.", ""], beam=2, max_len_b=3)
        assert hyps[1] == "" and isinstance(hyps[0], str)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Ein Mann.\nZwei Frauen.\n".encode())))
    assert main(["translate", "--model", str(teacher), "--beam", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_student_takes_the_teachers_positions_and_beam(hub, tmp_path):
    """A student of a brought teacher gets the teacher's max_position_embeddings (128 here, not the default 256) and
    the num_beams its generation config records (4), unless max_positions/num_beams are set; its folder's tokenizer
    says the student's positions (the teacher's tokenizer_config.json says 512), so a long source truncated by the
    tokenizer fits; a2d translate decodes with the recorded beam by default."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from a2d.translator import load_translator

    teacher, data = hub
    if not teacher.parent.name.startswith("shared-tied"):
        pytest.skip("one vocabulary layout is enough")
    assert json.loads((teacher / "tokenizer_config.json").read_text())["model_max_length"] == 512
    own = [o for o in STUDENT if not o.startswith("max_positions=")] + ["method=kd", "max_steps=1"]
    distill(load_config("tiny-student", own), data, tmp_path / "taken", teacher, log=quiet)
    best = tmp_path / "taken" / "best"
    assert read_yaml(tmp_path / "taken" / "config.yaml")["max_positions"] == 128  # recorded: --resume keeps it
    generation = json.loads((best / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["early_stopping"], generation["max_length"]) == (4, True, 128)
    tok, model = AutoTokenizer.from_pretrained(best), AutoModelForSeq2SeqLM.from_pretrained(best)
    assert tok.model_max_length == model.config.max_position_embeddings == 128
    batch = tok([" ".join(corpus_text(20)[0])], return_tensors="pt", truncation=True)
    assert batch["input_ids"].shape[1] == 128
    model.generate(**batch, max_new_tokens=2)  # (an IndexError with the teacher's 512)
    assert load_translator(best).default_beam == 4
    distill(load_config("tiny-student", own + ["max_positions=96", "num_beams=2"]), data, tmp_path / "told", teacher,
            log=quiet)
    told = load_model(tmp_path / "told")[0]
    assert (told.config.max_position_embeddings, told.generation_config.num_beams) == (96, 2)
    assert AutoTokenizer.from_pretrained(tmp_path / "told" / "best").model_max_length == 96


def test_hub_export_matches_hugging_face(hub, tmp_path):
    from a2d.translator import CT2Translator
    from a2d.export import export

    teacher, _ = hub
    export(teacher, tmp_path / "ct2", quantization="float32", log=quiet)
    model, vocab = load_model(teacher)
    sources = corpus_text(30)[0]
    assert CT2Translator(tmp_path / "ct2").translate(sources, beam=1) == translate(model, vocab, sources, beam=1)


def test_bad_teachers_and_tokenizers(hub, tmp_path, data_root):
    teacher, data = hub
    # a tokenizer that cannot encode the corpus: Greek text through a German/English vocabulary
    text = tmp_path / "el"
    text.mkdir()
    for split in ("train", "valid"):
        for lang in ("de", "en"):
            (text / f"{split}.{lang}").write_text("Ένας άντρας περπατά στον δρόμο με τον σκύλο του.\n" * 20,
                                                  encoding="utf-8")
    files = {s: (text / f"{s}.de", text / f"{s}.en") for s in ("train", "valid")}
    with pytest.raises(UserError, match=r"of the source .* pieces are <unk> \(limit 1\.0%\)"):
        prepare(tmp_path / "out", files, "de", "en", tokenizer=teacher, log=quiet)
    assert not (tmp_path / "out").exists()
    # a teacher whose vocabulary differs from the data's
    other = hub_folder(tmp_path / "other", seed=1, shared_vocab=(teacher / "source.spm").read_bytes()
                       != (teacher / "target.spm").read_bytes())
    with pytest.raises(UserError, match="another vocabulary"):
        distill(load_config("tiny-student", STUDENT + ["method=kd"]), data, tmp_path / "s", other, log=quiet)
    assert not (tmp_path / "s").exists()
    # another model family
    bart = tmp_path / "bart"
    bart.mkdir()
    (bart / "config.json").write_text(json.dumps({"model_type": "bart"}))
    with pytest.raises(UserError, match="a bart model; a2d supports Marian models only"):
        distill(load_config("tiny-student", STUDENT + ["method=kd"]), data, tmp_path / "s", bart, log=quiet)
    with pytest.raises(UserError, match="a bart model"):
        prepare(tmp_path / "out", files, "de", "en", tokenizer=bart, log=quiet)
