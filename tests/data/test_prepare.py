"""``prepare``: filtering and its counts, the files and meta.json it writes, atomicity, and ParallelData."""
from __future__ import annotations

import json
import unicodedata
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import a2d
import a2d.data.prepare as prep
from a2d.data.corpus import locate_corpus, read_lines
from a2d.data.prepare import ParallelData, load_meta, prepare, summary_lines
from a2d.data.vocab import BOS, EOS, PAD, Vocabulary
from a2d.errors import BadValue
from a2d.utils import UserError
from tests.conftest import corpus_sha256


def _normalise(text: str) -> str:
    """What SentencePiece's default nmt_nfkc normalisation does to plain text: NFKC, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def multi30k(data_root, tmp_path_factory):
    """A prepared slice of the shared Multi30k (2000 train pairs, all of valid and test)."""
    out = tmp_path_factory.mktemp("m30k") / "data"
    messages: list[str] = []
    splits = locate_corpus("multi30k", "de", "en")
    meta = prepare(out, splits, "de", "en", vocab_size=1000, max_train=2000, log=messages.append)
    return out, meta, splits, messages


def _write_pairs(folder: Path, name: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    src, tgt = folder / f"{name}.src.txt", folder / f"{name}.tgt.txt"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


LONG = " ".join(["ein sehr langer satz mit vielen wörtern"] * 20)


@pytest.fixture
def small_inputs(data_root, tmp_path):
    """Plain-text inputs from the first Multi30k lines, with planted empty-side and over-long pairs."""
    de = read_lines(data_root / "multi30k" / "train.de.gz")[:400]
    en = read_lines(data_root / "multi30k" / "train.en.gz")[:400]
    train = list(zip(de[:300], en[:300]))
    train[10] = ("", "only a target")
    train[20] = ("nur eine Quelle", "")
    train[30] = ("", "")
    train[40] = (LONG, "short")
    train[50] = ("kurz", LONG)
    valid = list(zip(de[300:350], en[300:350]))
    valid[5] = ("", "empty source")
    valid[6] = (LONG, "a long source is kept in valid")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    return {"train": _write_pairs(inputs, "train", train), "valid": _write_pairs(inputs, "valid", valid)}


# ---------------------------------------------------------------- the Multi30k slice
def test_meta_content(multi30k, data_root):
    out, meta, splits, _ = multi30k
    assert json.loads((out / "meta.json").read_text()) == meta == load_meta(out)
    assert (meta["src"], meta["tgt"], meta["max_len"]) == ("de", "en", 250)
    assert meta["vocab_size"] == len(Vocabulary.load(out)) <= 1000
    assert meta["a2d_version"] == a2d.__version__
    datetime.fromisoformat(meta["created"])
    assert meta["splits"]["train"] == {"lines": 2000, "kept": 2000, "dropped_empty": 0, "dropped_long": 0}
    assert meta["splits"]["valid"]["lines"] == meta["splits"]["valid"]["kept"] == 1014
    assert meta["splits"]["test"]["lines"] == meta["splits"]["test"]["kept"] == 1000
    sums = corpus_sha256(data_root)
    for split, (src, tgt) in splits.items():
        assert meta["sources"][split]["src"] == {"path": str(src.resolve()), "sha256": sums[src.name]}
        assert meta["sources"][split]["tgt"] == {"path": str(tgt.resolve()), "sha256": sums[tgt.name]}


def test_written_files(multi30k):
    out, meta, _, messages = multi30k
    expected = {"meta.json", "sentencepiece.model"} | {
        f"{split}.{ext}" for split in ("train", "valid", "test") for ext in ("de", "en", "safetensors")}
    assert {p.name for p in out.iterdir()} == expected
    assert [p.name for p in out.parent.iterdir()] == ["data"]  # no temp folder left beside it
    for split, counts in meta["splits"].items():
        arrays = load_file(str(out / f"{split}.safetensors"))
        assert arrays["src_tokens"].dtype == arrays["tgt_tokens"].dtype == np.int32
        assert arrays["src_offsets"].dtype == arrays["tgt_offsets"].dtype == np.int64
        assert len(arrays["src_offsets"]) == len(arrays["tgt_offsets"]) == counts["kept"] + 1
        assert arrays["src_offsets"][-1] == len(arrays["src_tokens"])
        for tokens in (arrays["src_tokens"], arrays["tgt_tokens"]):
            assert not np.isin(tokens, [PAD, BOS, EOS]).any()
            assert tokens.max() < meta["vocab_size"]
        assert len(read_lines(out / f"{split}.en")) == counts["kept"]
    assert any("2000 train pairs" in m for m in messages) and messages[-1] == f"wrote {out}"


def test_raw_text_is_kept_verbatim(multi30k, data_root):
    out, _, _, _ = multi30k
    assert read_lines(out / "valid.de") == read_lines(data_root / "multi30k" / "val.de.gz")
    assert read_lines(out / "train.en") == read_lines(data_root / "multi30k" / "train.en.gz")[:2000]


def test_parallel_data_round_trip(multi30k):
    out, meta, _, _ = multi30k
    vocab = Vocabulary.load(out)
    data = ParallelData.load(out, "train")
    assert len(data) == meta["splits"]["train"]["kept"] == len(data.src_text) == len(data.tgt_text)
    assert data.meta == meta
    for i in (0, 1, 2, 17, 999, len(data) - 1):
        src, tgt = data[i]
        assert isinstance(src[0], int)
        assert len(src) == data.src_lens[i] and len(tgt) == data.tgt_lens[i]
        assert vocab.decode(src) == _normalise(data.src_text[i])
        assert vocab.decode(tgt) == _normalise(data.tgt_text[i])
        assert src == vocab.encode(data.src_text[i])
    assert data[-1] == data[len(data) - 1]
    with pytest.raises(IndexError):
        data[len(data)]
    assert data.src_lens.shape == data.tgt_lens.shape == (len(data),)


def test_parallel_data_errors(multi30k, tmp_path):
    out, _, _, _ = multi30k
    with pytest.raises(UserError, match="no 'dev' split"):
        ParallelData.load(out, "dev")
    with pytest.raises(UserError) as e:
        ParallelData.load(tmp_path, "train")
    assert str(e.value) == f"{tmp_path}: not a prepared data directory (no meta.json); run a2d prepare"


def test_summary_lines(multi30k):
    _, meta, _, _ = multi30k
    text = "\n".join(summary_lines(meta))
    assert str(meta["vocab_size"]) in text
    assert "1014" in text and "2000" in text and "dropped" in text
    assert len(summary_lines(meta)) == 4


# ---------------------------------------------------------------- filtering on planted pairs (plain text input)
def test_empty_and_long_pairs(small_inputs, tmp_path):
    out = tmp_path / "out"
    meta = prepare(out, small_inputs, "de", "en", vocab_size=300, max_len=60, log=_quiet)
    train, valid = meta["splits"]["train"], meta["splits"]["valid"]
    assert train["lines"] == 300 and train["dropped_empty"] == 3 and train["dropped_long"] >= 2
    assert train["kept"] == 300 - 3 - train["dropped_long"]
    assert valid == {"lines": 50, "kept": 49, "dropped_empty": 1, "dropped_long": 0}
    data = ParallelData.load(out, "train")
    assert max(data.src_lens.max(), data.tgt_lens.max()) <= 60
    assert LONG not in data.src_text and LONG not in data.tgt_text
    assert "" not in data.src_text and "" not in data.tgt_text
    dev = ParallelData.load(out, "valid")
    i = dev.src_text.index(LONG)  # long pairs are kept whole as text in valid, their ids cut to max_len
    assert dev.tgt_text[i] == "a long source is kept in valid"
    assert dev.src_lens[i] == 60
    assert "empty source" not in dev.tgt_text
    with pytest.raises(UserError, match="no 'test' split"):
        ParallelData.load(out, "test")


def test_max_train_truncates(small_inputs, tmp_path):
    meta = prepare(tmp_path / "out", small_inputs, "de", "en", vocab_size=300, max_train=15, log=_quiet)
    assert meta["splits"]["train"]["lines"] == 15
    assert meta["splits"]["train"]["dropped_empty"] == 1  # only the pair at index 10 is inside the slice
    assert meta["max_train"] == 15


def test_overwrite_prepared_dir_but_not_other_dirs(small_inputs, tmp_path):
    out = tmp_path / "out"
    prepare(out, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    meta = prepare(out, small_inputs, "de", "en", vocab_size=300, max_train=100, log=_quiet)
    assert load_meta(out)["splits"]["train"]["lines"] == 100 == meta["splits"]["train"]["lines"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(UserError, match=f"^{other}: holds files a2d prepare did not write \\(todo.txt\\)"):
        prepare(other, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare(empty, small_inputs, "de", "en", vocab_size=300, max_train=50, log=_quiet)
    assert (empty / "meta.json").is_file()


def test_interrupted_prepare_leaves_nothing(small_inputs, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "train_sentencepiece", boom)
    out = tmp_path / "work" / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(out, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    assert list((tmp_path / "work").iterdir()) == []


def test_interrupted_overwrite_keeps_old_dir(small_inputs, tmp_path, monkeypatch):
    out = tmp_path / "work" / "out"
    old = prepare(out, small_inputs, "de", "en", vocab_size=300, max_train=80, log=_quiet)
    monkeypatch.setattr(prep, "train_sentencepiece", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        prepare(out, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    assert load_meta(out) == old
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["out"]


def test_vocab_size_errors(small_inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^vocab_size=30: SentencePiece cannot train") as e:
        prepare(out, small_inputs, "de", "en", vocab_size=30, log=_quiet)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"^vocab_size=3: must be larger than 4"):
        prepare(out, small_inputs, "de", "en", vocab_size=3, log=_quiet)
    assert list(tmp_path.iterdir()) == [tmp_path / "inputs"]


def test_bad_input_writes_nothing(small_inputs, tmp_path):
    src, tgt = small_inputs["valid"]
    tgt.write_text(tgt.read_text() + "one line too many\n")
    out = tmp_path / "out"
    with pytest.raises(UserError, match="50 lines .* 51"):
        prepare(out, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    assert not out.exists()
    with pytest.raises(UserError, match="needs the split"):
        prepare(out, {"train": small_inputs["train"]}, "de", "en", log=_quiet)
    with pytest.raises(UserError, match="must differ"):
        prepare(out, small_inputs, "de", "de", log=_quiet)
    with pytest.raises(BadValue, match="^max_len=0: must be at least 1$") as e:
        prepare(out, small_inputs, "de", "en", max_len=0, log=_quiet)
    assert (e.value.option, e.value.value) == ("max_len", 0)
    assert list(tmp_path.iterdir()) == [tmp_path / "inputs"]


def test_load_meta_errors(tmp_path):
    with pytest.raises(UserError, match="not a prepared data directory"):
        load_meta(tmp_path / "missing")
    (tmp_path / "meta.json").write_text("{broken")
    with pytest.raises(UserError, match="meta.json: not valid JSON"):
        load_meta(tmp_path)


def test_given_vocabulary(small_inputs, tmp_path):
    """--vocab: the data is encoded with an existing model (a teacher's), copied byte for byte, none trained."""
    first = tmp_path / "first"
    prepare(first, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    model = first / "sentencepiece.model"
    lines = []
    again = tmp_path / "again"
    meta = prepare(again, small_inputs, "de", "en", vocab_size=5000, vocab=model, log=lines.append)
    assert (again / "sentencepiece.model").read_bytes() == model.read_bytes()
    assert meta["vocab_size"] == 300 and meta["vocab_from"]["path"] == str(model.resolve())
    assert not any("training a joint" in x for x in lines)
    a, b = ParallelData.load(first, "train"), ParallelData.load(again, "train")
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    assert load_meta(first)["vocab_from"] is None


def test_given_vocabulary_errors(small_inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"^\S*missing.model: no SentencePiece model here$"):
        prepare(out, small_inputs, "de", "en", vocab=tmp_path / "missing.model", log=_quiet)
    junk = tmp_path / "junk.model"
    junk.write_text("not a model\n")
    with pytest.raises(UserError, match=r"junk.model: cannot be loaded \(not a SentencePiece model\)$"):
        prepare(out, small_inputs, "de", "en", vocab=junk, log=_quiet)
    assert not out.exists()


def test_prepare_is_reproducible(small_inputs, tmp_path):
    """The same text gives the same vocabulary file byte for byte (no temporary input path is recorded in it),
    so data prepared again on a new machine still matches a model trained on the first preparation."""
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(a, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    prepare(b, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    assert (a / "sentencepiece.model").read_bytes() == (b / "sentencepiece.model").read_bytes()
    assert b"spm_train" not in (a / "sentencepiece.model").read_bytes()
    assert (a / "train.safetensors").read_bytes() == (b / "train.safetensors").read_bytes()


def test_a_users_file_in_a_prepared_dir_is_never_deleted(small_inputs, tmp_path):
    out = tmp_path / "out"
    prepare(out, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    (out / "notes.txt").write_text("mine")
    before = (out / "train.safetensors").read_bytes()
    with pytest.raises(UserError, match="notes.txt.*overwrite=True"):
        prepare(out, small_inputs, "de", "en", vocab_size=300, max_train=100, log=_quiet)
    assert (out / "notes.txt").read_text() == "mine" and (out / "train.safetensors").read_bytes() == before
    meta = prepare(out, small_inputs, "de", "en", vocab_size=300, max_train=100, log=_quiet, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert load_meta(out)["splits"]["train"]["lines"] == 100 and "notes.txt" not in meta["files"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    # a folder prepared before meta.json listed its files is still recognised as ours
    meta = json.loads((out / "meta.json").read_text())
    del meta["files"]
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "notes.txt").unlink()
    prepare(out, small_inputs, "de", "en", vocab_size=300, max_train=50, log=_quiet)
    assert load_meta(out)["splits"]["train"]["lines"] == 50


def test_a_refused_out_is_not_touched(small_inputs, tmp_path):
    """--out over a folder of the user's is refused before anything is created in it (a probe file was created and
    removed there first, changing the folder's modification time)."""
    import os

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    os.utime(out, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    with pytest.raises(UserError, match="holds files a2d prepare did not write"):
        prepare(out, small_inputs, "de", "en", vocab_size=300, log=_quiet)
    assert out.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "mine"]
