"""Known parallel corpora: where their files live, how to fetch them, and how to read them.

A corpus is found in one of two ways (see :func:`locate_corpus`):

* ``$A2D_DATA_DIR`` is set: its files are read from ``$A2D_DATA_DIR/<name>/`` and nothing is downloaded;
* otherwise each file is downloaded once into ``$XDG_CACHE_HOME/a2d/<name>/`` (default ``~/.cache/a2d``)
  and checked against the SHA-256 recorded here.

:func:`read_lines` and :func:`read_parallel` read plain or gzip text, one sentence per line, and turn every
problem with the input (missing file, bad UTF-8, corrupt gzip, unequal line counts) into a
:class:`~a2d.utils.UserError` that names the file.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from a2d.errors import BadValue
from a2d.utils import UserError, sha256_file

SPLITS = ("train", "valid", "test")
_GZIP_MAGIC = b"\x1f\x8b"
# Characters that str.splitlines() or text-mode file reading treat as line breaks; inside a sentence they
# would break the one-sentence-per-line files that prepare writes, so they become spaces.
_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
#: ``str.translate`` table that turns each of those line-break characters into a space
#: (``text.translate(LINE_BREAK_TABLE)`` keeps a sentence on one line of a one-sentence-per-line file).
LINE_BREAK_TABLE = str.maketrans({c: " " for c in _LINE_BREAKS})


@dataclass(frozen=True)
class CorpusSpec:
    """One downloadable corpus.

    ``files`` maps a split (``train``/``valid``/``test``) to a file-name template with ``{lang}``;
    ``url`` is a template with ``{file}``; ``sha256`` maps each concrete file name to its checksum.
    """

    languages: tuple[str, ...]
    files: dict[str, str]
    url: str
    sha256: dict[str, str]

    def file_name(self, split: str, lang: str) -> str:
        return self.files[split].format(lang=lang)


CORPORA: dict[str, CorpusSpec] = {
    "multi30k": CorpusSpec(
        languages=("de", "en"),
        files={"train": "train.{lang}.gz", "valid": "val.{lang}.gz", "test": "test_2016_flickr.{lang}.gz"},
        url="https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{file}",
        sha256={
            "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
            "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
            "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
            "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
            "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
            "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
        },
    ),
}


def corpus_spec(name: str, src: str, tgt: str) -> CorpusSpec:
    """The :class:`CorpusSpec` of ``name``, after checking that ``src`` and ``tgt`` are two of its languages."""
    if name not in CORPORA:
        raise BadValue("corpus", name, f"unknown corpus (choose from {', '.join(sorted(CORPORA))})")
    spec = CORPORA[name]
    for option, lang in (("src", src), ("tgt", tgt)):
        if lang not in spec.languages:
            raise BadValue(option, lang, f"{name} has no such language (choose from {', '.join(spec.languages)})")
    if src == tgt:
        raise BadValue(("src", "tgt"), (src, tgt), "source and target languages must differ")
    return spec


def cache_dir(name: str) -> Path:
    """``$XDG_CACHE_HOME/a2d/<name>`` (``~/.cache/a2d/<name>`` when the variable is unset or empty)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "a2d" / name


def locate_corpus(name: str, src: str, tgt: str) -> dict[str, tuple[Path, Path]]:
    """Paths of every split of corpus ``name``: ``{split: (src_file, tgt_file)}``.

    With ``$A2D_DATA_DIR`` set, the files must already be in ``$A2D_DATA_DIR/<name>/`` (their checksums are
    not verified there; ``prepare`` records them). Otherwise missing files are downloaded into the cache and
    verified; cached files whose checksum matches are reused.
    """
    spec = corpus_spec(name, src, tgt)
    data_dir = os.environ.get("A2D_DATA_DIR")
    found: dict[str, tuple[Path, Path]] = {}
    for split in spec.files:
        pair = []
        for lang in (src, tgt):
            file = spec.file_name(split, lang)
            if data_dir:
                path = Path(data_dir) / name / file
                if not path.is_file():
                    raise UserError(f"{path}: no such file (A2D_DATA_DIR={data_dir}; unset it to download {name})")
            else:
                path = _fetch(spec, file, cache_dir(name))
            pair.append(path)
        found[split] = (pair[0], pair[1])
    return found


def _fetch(spec: CorpusSpec, file: str, folder: Path) -> Path:
    """Return ``folder/file``, downloading it first unless a copy with the right checksum is there."""
    path = folder / file
    expected = spec.sha256[file]
    if path.is_file() and sha256_file(path) == expected:
        return path
    url = spec.url.format(file=file)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{file}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        hint = f"set A2D_DATA_DIR to a folder whose {folder.name}/ holds {file}"
        digest = _download(url, fd, offline_hint=hint)
        if digest != expected:
            raise UserError(f"{url}: downloaded file has SHA-256 {digest}, expected {expected}; "
                            f"try again later, or {hint}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _download(url: str, fd: int, offline_hint: str) -> str:
    """Stream ``url`` into the open file descriptor ``fd`` (closed afterwards); return the SHA-256."""
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                while block := response.read(1 << 20):
                    h.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise UserError(f"{url}: download failed ({reason}); to work offline, {offline_hint}") from None
    return h.hexdigest()


def _read_bytes(path: Path) -> bytes:
    """The (decompressed, when it starts with the gzip magic bytes) content of ``path``."""
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == _GZIP_MAGIC
        if not compressed:
            return path.read_bytes()
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a text file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"{path}: corrupt gzip file ({e or 'truncated'})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def read_lines(path: Path | str) -> list[str]:
    """Lines of a plain or gzip text file (gzip is detected by its magic bytes, not the suffix).

    Each line loses its newline and surrounding whitespace; a final newline does not make an extra line.
    Only ``\\n`` separates lines; other line-break characters inside a line (``\\r``, U+2028...) become
    spaces, so the sentence survives any later reader. A leading byte-order mark is dropped.
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8") from None
    if not text:
        return []
    if text.endswith("\n"):
        text = text[:-1]
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if any(c in text for c in _LINE_BREAKS):
        lines = [line.translate(LINE_BREAK_TABLE) for line in lines]
    return [line.strip() for line in lines]


def read_parallel(src_path: Path | str, tgt_path: Path | str) -> tuple[list[str], list[str]]:
    """Line-aligned source and target sentences; unequal line counts are a :class:`UserError`."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise UserError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
                        "parallel files must be line-aligned")
    return src, tgt


__all__ = ["CORPORA", "CorpusSpec", "SPLITS", "cache_dir", "corpus_spec", "locate_corpus", "read_lines",
           "read_parallel"]
