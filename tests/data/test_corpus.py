"""Corpus registry, locating the shared Multi30k files, and reading plain/gzip text with clear errors."""
from __future__ import annotations

import gzip
import io
import shutil

import pytest

from a2d.data import corpus
from a2d.data.corpus import CORPORA, locate_corpus, read_lines, read_parallel
from a2d.utils import UserError
from tests.conftest import corpus_sha256


def _no_network(*args, **kwargs):
    raise AssertionError("the test tried to use the network")


# ---------------------------------------------------------------- registry and locate_corpus
def test_registry_checksums_match_shared_sha256sums(data_root):
    listed = corpus_sha256(data_root)
    spec = CORPORA["multi30k"]
    assert spec.sha256 == listed
    assert {spec.file_name(split, lang) for split in spec.files for lang in spec.languages} == set(listed)


def test_locate_corpus_with_data_dir(data_root, monkeypatch):
    monkeypatch.setenv("A2D_DATA_DIR", str(data_root))
    monkeypatch.setattr(corpus.urllib.request, "urlopen", _no_network)
    found = locate_corpus("multi30k", "en", "de")
    assert set(found) == {"train", "valid", "test"}
    assert found["train"] == (data_root / "multi30k" / "train.en.gz", data_root / "multi30k" / "train.de.gz")
    assert found["valid"][0].name == "val.en.gz"
    assert found["test"][1].name == "test_2016_flickr.de.gz"
    assert all(p.is_file() for pair in found.values() for p in pair)


def test_locate_corpus_missing_file_names_path(data_root, tmp_path, monkeypatch):
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for name in ("train.de.gz", "train.en.gz", "val.de.gz"):
        (folder / name).write_bytes(b"")
    monkeypatch.setenv("A2D_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=r"val\.en\.gz: no such file"):
        locate_corpus("multi30k", "de", "en")


@pytest.mark.parametrize("args, words", [
    (("wmt99", "de", "en"), ["corpus='wmt99'", "multi30k"]),
    (("multi30k", "fr", "en"), ["src='fr'", "de, en"]),
    (("multi30k", "de", "cs"), ["tgt='cs'", "de, en"]),
    (("multi30k", "de", "de"), ["must differ"]),
])
def test_locate_corpus_bad_names(args, words):
    with pytest.raises(UserError) as e:
        locate_corpus(*args)
    for word in words:
        assert word in str(e.value)


def test_cached_files_are_reused_without_network(data_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "a2d" / "multi30k"
    cache.mkdir(parents=True)
    for path in (data_root / "multi30k").glob("*.gz"):
        shutil.copyfile(path, cache / path.name)
    monkeypatch.delenv("A2D_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus.urllib.request, "urlopen", _no_network)
    found = locate_corpus("multi30k", "de", "en")
    assert found["train"] == (cache / "train.de.gz", cache / "train.en.gz")


def test_download_with_wrong_checksum_is_removed(tmp_path, monkeypatch):
    """The download itself is faked: a wrong payload must raise and leave nothing in the cache."""
    monkeypatch.delenv("A2D_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(corpus.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not the file"))
    with pytest.raises(UserError, match="expected"):
        locate_corpus("multi30k", "de", "en")
    assert list((tmp_path / "a2d" / "multi30k").iterdir()) == []


# ---------------------------------------------------------------- read_lines / read_parallel
def test_read_lines_plain_and_gzip_agree(tmp_path):
    text = "  Ein Hund läuft.  \r\nA second line\t\n\nlast line without newline"
    expected = ["Ein Hund läuft.", "A second line", "", "last line without newline"]
    plain, gz = tmp_path / "a.txt", tmp_path / "a.gz"
    plain.write_bytes(text.encode())
    gz.write_bytes(gzip.compress(text.encode()))
    assert read_lines(plain) == expected
    assert read_lines(gz) == expected


def test_read_lines_detects_gzip_by_content_not_suffix(tmp_path):
    gzip_no_suffix, plain_gz_suffix = tmp_path / "data.txt", tmp_path / "data.gz"
    gzip_no_suffix.write_bytes(gzip.compress(b"one\ntwo\n"))
    plain_gz_suffix.write_bytes(b"one\ntwo\n")
    assert read_lines(gzip_no_suffix) == read_lines(plain_gz_suffix) == ["one", "two"]


def test_read_lines_edge_cases(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"")
    assert read_lines(path) == []
    path.write_bytes("\ufeffbom\nin\u2028side\n".encode())
    assert read_lines(path) == ["bom", "in side"]


def test_read_lines_shared_gzip(data_root):
    lines = read_lines(data_root / "multi30k" / "val.en.gz")
    assert len(lines) == 1014
    assert all(line == line.strip() and line for line in lines)


def test_read_lines_missing_file(tmp_path):
    path = tmp_path / "nope.de"
    with pytest.raises(UserError, match=f"^{path}: no such file$"):
        read_lines(path)


def test_read_lines_bad_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.en"
    path.write_bytes(b"fine\nalso fine\nbroken \xff byte\nok\n")
    with pytest.raises(UserError, match=f"^{path}:3: not valid UTF-8$"):
        read_lines(path)
    gz = tmp_path / "bad.en.gz"
    gz.write_bytes(gzip.compress(b"fine\n\xc3\n"))
    with pytest.raises(UserError, match=f"^{gz}:2: not valid UTF-8$"):
        read_lines(gz)


@pytest.mark.parametrize("payload", [gzip.compress(b"some text\n" * 100)[:-6], b"\x1f\x8bthis is not gzip"],
                         ids=["truncated", "garbage"])
def test_read_lines_corrupt_gzip(tmp_path, payload):
    path = tmp_path / "broken.gz"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=f"^{path}: corrupt gzip file"):
        read_lines(path)


def test_read_parallel_unequal_counts(tmp_path):
    src, tgt = tmp_path / "t.de", tmp_path / "t.en"
    src.write_text("a\nb\nc\n")
    tgt.write_text("a\nb\n")
    with pytest.raises(UserError) as e:
        read_parallel(src, tgt)
    message = str(e.value)
    assert str(src) in message and str(tgt) in message and "3" in message and "2" in message
    assert "\n" not in message


def test_read_parallel_equal_counts(tmp_path):
    src, tgt = tmp_path / "t.de", tmp_path / "t.en"
    src.write_text("a\n\nc\n")
    tgt.write_text("x\ny\n\n")
    assert read_parallel(src, tgt) == (["a", "", "c"], ["x", "y", ""])
