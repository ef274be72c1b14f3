"""A Marian tokenizer you bring (a2d.tokenizer): its files' mistakes are one line naming the file, and a model whose
vocabulary is not the data's is refused naming the files that decide the ids."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from a2d.cli import main
from a2d.data.prepare import prepare
from tests.hub_models import corpus_text, hub_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, data_root):
    """A hub-layout Marian folder (one SentencePiece model, OPUS-MT's vocab.json), raw text, and data prepared with it."""
    root = tmp_path_factory.mktemp("hub")
    teacher = hub_folder(root / "teacher")
    src, tgt = corpus_text(224)
    text = root / "text"
    text.mkdir()
    splits = {}
    for split, rows in (("train", slice(0, 200)), ("valid", slice(200, None))):
        for lang, lines in (("de", src[rows]), ("en", tgt[rows])):
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        splits[split] = (text / f"{split}.de", text / f"{split}.en")
    prepare(root / "data", splits, "de", "en", tokenizer=teacher, log=lambda *a: None)
    return teacher, splits, root / "data"


def one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("a2d: error: ")
    return err.strip()


BROKEN = {  # file -> its text, what the error says after naming it
    "vocab-list": ("vocab.json", '["</s>", "<unk>", "<pad>"]', "expected a JSON object of pieces and their ids, found a list"),
    "vocab-not-json": ("vocab.json", '{"</s>": 0, ', "not valid JSON"),
    "vocab-id-not-int": ("vocab.json", '{"</s>": 0, "<unk>": "one", "<pad>": 2}', "found '<unk>': 'one'"),
    "vocab-without-unk": ("vocab.json", '{"</s>": 0, "<pad>": 1}', "has no <unk>"),
    "config-not-json": ("tokenizer_config.json", "{tokenizer_class: Marian", "not valid JSON"),
    "config-list": ("tokenizer_config.json", "[]", "expected a JSON object of settings, found a list"),
    "config-bert": ("tokenizer_config.json", json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}),
                    "the tokenizer of this folder is a BertTokenizer, not a MarianTokenizer"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_tokenizer_file_is_named(hub, tmp_path, capsys, case):
    """prepare --tokenizer with a vocab.json that is a list was an AttributeError traceback, a BertTokenizer's
    tokenizer_config.json was taken for a Marian one (and copied into the data), and a file that is not JSON was
    reported without saying which: each is now one line that starts with the file."""
    teacher, splits, _ = hub
    name, text, says = BROKEN[case]
    folder = tmp_path / "tokenizer"
    shutil.copytree(teacher, folder)
    (folder / name).write_text(text, encoding="utf-8")
    out = tmp_path / "data"
    argv = ["prepare", "--train-src", splits["train"][0], "--train-tgt", splits["train"][1], "--valid-src",
            splits["valid"][0], "--valid-tgt", splits["valid"][1], "--src", "de", "--tgt", "en",
            "--tokenizer", folder, "--out", out]
    err = one_line_error(argv, capsys)
    assert err.startswith(f"a2d: error: {folder / name}: ") and says in err
    assert not out.exists()


def test_another_vocabulary_names_the_marian_files(hub, tmp_path, capsys):
    """A teacher whose tokenizer is not the data's: the message named the data directory's sentencepiece.model,
    which a directory prepared with a Marian tokenizer does not have; it names its files and the way out now."""
    _, _, data = hub
    other = hub_folder(tmp_path / "other", shared_vocab=False)  # source.spm and target.spm of their own
    out = tmp_path / "student"
    for argv in (["distill", "--data", data, "--teacher", other, "--method", "kd", "--preset", "tiny-student",
                  "--out", out],
                 ["distill-data", "--teacher", other, "--data", data, "--out", out],
                 ["evaluate", "--model", other, "--data", data, "--split", "valid"]):
        err = one_line_error(argv, capsys)
        flag = "--model" if argv[0] == "evaluate" else "--teacher"
        assert err.startswith(f"a2d: error: {flag} {other}: trained with another vocabulary than {data}"), argv[0]
        assert "data directory's source.spm, target.spm and vocab.json" in err and "sentencepiece.model" not in err
        assert err.endswith(f"prepare the data with --tokenizer {other} (a2d prepare)")
        assert not out.exists()
