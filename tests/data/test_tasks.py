"""Data of the classifier and language-model families: GLUE's TSV layout, the Multi30k stand-ins, prepared folders."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from a2d.data.corpus import locate_corpus
from a2d.data.tasks import (Example, TaskData, data_task, multi30k_pairs, prepare_sources, prepare_task, read_glue)
from a2d.utils import UserError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_glue_single_sentences_and_pairs(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\nit 's a charming journey . \t1\nbad \" quotes\t0\n")
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngreat\t1\n")
    task, splits = read_glue(tmp_path / "SST-2")
    assert task == "sst2"
    assert splits["train"] == [Example("it 's a charming journey .", None, 1), Example('bad " quotes', None, 0)]
    write(tmp_path / "MRPC" / "train.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b .\tA b !\n")
    write(tmp_path / "MRPC" / "dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t3\t4\tC .\tD .\n")
    task, splits = read_glue(tmp_path / "MRPC")
    assert task == "mrpc" and splits["valid"] == [Example("C .", "D .", 0)]
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP .\tH .\tnot_entailment\n")
    write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tP .\tH .\tentailment\n")
    assert read_glue(tmp_path / "RTE")[1]["train"] == [Example("P .", "H .", 1)]


def test_glue_mistakes_name_the_file_and_line(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "text\tlabel\nx\t1\n")
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nx\t1\n")
    with pytest.raises(UserError, match=r"SST-2/train.tsv:1: no 'sentence' column \(the header has text, label\)"):
        read_glue(tmp_path / "SST-2")
    write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\nx\t1\ny\tpositive\n")
    with pytest.raises(UserError, match=r"SST-2/train.tsv:3: label 'positive' is not one of 0, 1"):
        read_glue(tmp_path / "SST-2")
    (tmp_path / "SST-2" / "dev.tsv").unlink()
    with pytest.raises(UserError, match=r"SST-2/dev.tsv: no such file"):
        read_glue(tmp_path / "SST-2")
    with pytest.raises(UserError, match="not a GLUE task a2d reads"):
        read_glue(tmp_path / "SST-2", "imdb")


def test_multi30k_pairs_are_half_translations_half_hard_negatives(data_root):
    corpus = locate_corpus("multi30k", "de", "en")
    splits = multi30k_pairs(corpus, seed=3, max_train=400)
    again = multi30k_pairs(corpus, seed=3, max_train=400)
    assert splits == again and len(splits["train"]) == 400 and len(splits["valid"]) == 1014
    from a2d.data.corpus import read_lines
    de, en = (read_lines(p) for p in corpus["train"])
    positives = [ex for ex in splits["train"] if ex.label == 1]
    negatives = [ex for ex in splits["train"] if ex.label == 0]
    assert 150 < len(positives) < 250
    assert all(en[de.index(ex.text_a)] == ex.text_b for ex in positives)
    assert all(en[de.index(ex.text_a)] != ex.text_b for ex in negatives)
    # hard: a negative shares words with the true translation more often than a random sentence does
    words = lambda s: {w.strip(".,").lower() for w in s.split()}  # noqa: E731
    shared = sum(len(words(ex.text_b) & words(en[de.index(ex.text_a)])) for ex in negatives) / len(negatives)
    assert shared > 3


def test_prepared_folder_loads_bare_and_refuses_to_overwrite(tmp_path):
    splits = {"train": [Example("a b c", "d e", 1), Example("f g", "h", 0)] * 20,
              "valid": [Example("a b", "d", 1)], "test": [Example("g h", "e", 0)]}
    meta = prepare_task(tmp_path / "d", "classification", "bert", splits, label_names=["no", "yes"], vocab_size=60,
                        max_len=16, log=lambda *_: None)
    assert meta["splits"]["train"]["label_counts"] == [20, 20] and meta["pair"]
    assert data_task(tmp_path / "d") == "classification"
    tok = AutoTokenizer.from_pretrained(tmp_path / "d")  # transformers alone
    data = TaskData.load(tmp_path / "d", "valid")
    assert data.ids[0].tolist() == tok("a b", "d")["input_ids"] and data.types[0].tolist()[-1] == 1
    assert data.labels.tolist() == [1]
    with pytest.raises(UserError, match="exists and is not an empty folder"):
        prepare_task(tmp_path / "d", "classification", "bert", splits, log=lambda *_: None)
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == meta


def test_lm_text_files(tmp_path):
    write(tmp_path / "train.txt", "a man rides a bike .\n\ntwo dogs play .\n" * 10)
    write(tmp_path / "valid.txt", "a dog rides .\n")
    meta = prepare_sources(tmp_path / "lm", "lm", files={"train": tmp_path / "train.txt", "valid": tmp_path / "valid.txt"},
                           vocab_size=300, max_len=32, log=lambda *_: None)
    assert meta["task"] == "lm" and meta["family"] == "gpt2" and meta["splits"]["train"]["examples"] == 20
    tok = AutoTokenizer.from_pretrained(tmp_path / "lm")
    ids = TaskData.load(tmp_path / "lm", "valid").ids[0].tolist()
    assert ids[0] == ids[-1] == tok.eos_token_id and tok.decode(ids[1:-1]) == "a dog rides ."
    with pytest.raises(UserError, match="give one source"):
        prepare_sources(tmp_path / "x", "lm", log=lambda *_: None)
    with pytest.raises(UserError, match="family 'bert': a lm model is gpt2 or llama"):
        prepare_sources(tmp_path / "x", "lm", family="bert", files={"train": tmp_path / "train.txt"})
    assert not (tmp_path / "x").exists()
