"""``a2d prepare``: turn raw parallel text into a data directory that training reads quickly.

A prepared directory holds::

    sentencepiece.model           joint SentencePiece model over train source + target (pad=0 unk=1 bos=2 eos=3)
    {split}.{src}, {split}.{tgt}  the kept raw sentences, one per line (the BLEU references)
    {split}.safetensors           int32 src_tokens, tgt_tokens (all sentences concatenated, no </s>) and
                                  int64 src_offsets, tgt_offsets (length n+1): sentence i is tokens[o[i]:o[i+1]]
    meta.json                     languages, vocabulary size, max_len, per-split counts, source checksums

Pairs with an empty side are dropped from every split. In ``train`` only, pairs with a side longer than
``max_len`` subwords are dropped too; ``valid``/``test`` keep them whole as text (so BLEU is computed against
every reference), and their token ids are cut to ``max_len`` so that no model input exceeds it.
The directory appears only once it is complete (:func:`a2d.utils.atomic_dir`).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import a2d
from a2d.data.corpus import SPLITS, read_lines, read_parallel
from a2d.data.vocab import SPM_FILE, Vocabulary, train_sentencepiece
from a2d.errors import BadValue, OutputExists
from a2d.rundir import resolve_model_dir
from a2d.tokenizer import MAX_UNKNOWN_RATE, check_unknown_rate
from a2d.utils import UserError, atomic_dir, check_writable_dir, check_writable_parent, sha256_file

META_FILE = "meta.json"
FORMAT_VERSION = 1


@dataclass
class Split:
    """One split while it is being prepared: raw lines, then the kept lines and their ids.

    ``lines`` is the raw line count; ``dropped_*`` count the pairs removed; ``src_ids``/``tgt_ids`` are set
    by :func:`encode_split`, and :func:`write_split` writes the result.
    """

    name: str
    src_path: Path
    tgt_path: Path
    src: list[str]
    tgt: list[str]
    lines: int
    dropped_empty: int = 0
    dropped_long: int = 0
    src_ids: list[list[int]] | None = None
    tgt_ids: list[list[int]] | None = None


def prepare(out_dir: Path | str, splits: dict[str, tuple[Path, Path]], src_lang: str, tgt_lang: str,
            vocab_size: int = 8000, max_train: int | None = None, max_len: int = 250, seed: int = 1,
            vocab: Path | str | None = None, log: Callable[[str], None] = print, overwrite: bool = False,
            tokenizer: Path | str | None = None, max_unknown: float = MAX_UNKNOWN_RATE) -> dict:
    """Prepare ``splits`` (``{split: (src_file, tgt_file)}``, needs ``train`` and ``valid``) into ``out_dir``.

    Every input is read and checked before anything is written. ``max_train`` keeps only the first N train
    pairs; ``max_len`` is the longest side (in subwords, without ``</s>``) a training pair may have.
    ``vocab`` is an existing SentencePiece model (a teacher's ``sentencepiece.model``) to encode with instead
    of training one; ``vocab_size`` is then not used. A student distilled from a teacher must share its
    vocabulary, so data for a teacher trained elsewhere is prepared with the teacher's own model.
    ``tokenizer`` is a folder with a tokenizer (a Hugging Face Marian folder, e.g. an OPUS-MT teacher's, or
    an a2d model folder): its files are copied in and the corpus is encoded with it (source with its
    source side, target with its target side). A given vocabulary or tokenizer that maps more than
    ``max_unknown`` of either side's train pieces to ``<unk>`` is refused.
    An ``out_dir`` that holds a previous result of this function is replaced; one that holds other files
    too is refused unless ``overwrite``, which replaces the prepared files and keeps the others.
    Progress goes to ``log``; the per-split counts do not (print :func:`summary_lines` of the result).
    Returns the metadata written to ``meta.json``.
    """
    out_dir = Path(out_dir)
    _check_options(out_dir, splits, src_lang, tgt_lang, vocab_size, max_train, max_len)
    foreign = _foreign_files(out_dir)
    if foreign and not overwrite:
        raise OutputExists(out_dir, f"holds files a2d prepare did not write ({', '.join(foreign[:3])}"
                                    f"{', ...' if len(foreign) > 3 else ''})",
                           overwrite="replace the prepared files and keep these")
    if foreign:  # overwrite: the prepared files are moved in among the user's
        check_writable_dir(out_dir)
    data = _read_splits(splits, max_train)
    for part in data.values():
        _drop_empty(part)
        if not part.src:
            raise UserError(f"{part.src_path}, {part.tgt_path}: no sentence pairs with two non-empty sides")
    sources = {name: {"src": _source(part.src_path), "tgt": _source(part.tgt_path)} for name, part in data.items()}
    if vocab is not None and tokenizer is not None:
        raise BadValue(("vocab", "tokenizer"), (vocab, tokenizer), "give one, not both")
    given = Path(vocab) if vocab is not None else Path(tokenizer) if tokenizer is not None else None
    if vocab is not None:
        vocab = Vocabulary(given)  # a clear error now if it is missing or not one of ours, before anything is written
    elif tokenizer is not None:
        vocab = _load_tokenizer(given)

    with (atomic_dir(out_dir) if not foreign else _staging(out_dir)) as tmp:
        if given is not None:
            vocab.save(tmp)
            log(f"encoding with the given {'tokenizer' if tokenizer is not None else 'SentencePiece model'} "
                f"{given} ({len(vocab)} pieces)")
        else:
            log(f"training a joint SentencePiece model (vocab_size={vocab_size}) on {len(data['train'].src)} "
                "train pairs")
            vocab = _train_vocab(tmp, data["train"], vocab_size, seed)
            if len(vocab) < vocab_size:
                log(f"note: the training text supports only {len(vocab)} pieces, fewer than vocab_size={vocab_size}")
        for part in data.values():
            encode_split(part, vocab, max_len, drop_long=part.name == "train")
            if given is not None and part.name == "train":  # before anything is published
                unknown = check_unknown_rate(part.src_ids, part.tgt_ids, vocab.unk_id, f"{given} on {part.src_path}",
                                             max_unknown)
                log(f"unknown pieces: {unknown[0]:.3%} of the source, {unknown[1]:.3%} of the target")
            if not part.src:
                raise BadValue("max_len", max_len, f"every pair of {part.src_path}, {part.tgt_path} is longer")
            write_split(tmp, part, src_lang, tgt_lang)
        meta = {
            "format": FORMAT_VERSION,
            "src": src_lang,
            "tgt": tgt_lang,
            "vocab_size": len(vocab),
            "max_len": max_len,
            "max_train": max_train,
            "seed": seed,
            "splits": {name: {"lines": p.lines, "kept": len(p.src), "dropped_empty": p.dropped_empty,
                              "dropped_long": p.dropped_long} for name, p in data.items()},
            "sources": sources,
            "vocab_from": _source(given) if given is not None and given.is_file() else None,
            "sentencepiece_sha256": sha256_file(tmp / SPM_FILE) if (tmp / SPM_FILE).is_file() else None,
            "tokenizer": {"kind": type(vocab).__name__, "from": str(given.resolve()), "sha256": vocab.checksum(),
                          "unknown_rate": {"src": unknown[0], "tgt": unknown[1]}} if given is not None else None,
            "a2d_version": a2d.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        meta["files"] = sorted(p.name for p in tmp.iterdir())
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out_dir}")  # the caller prints summary_lines(meta)
    return meta


@contextmanager
def _staging(out_dir: Path):
    """Like :func:`a2d.utils.atomic_dir`, but the result is moved into ``out_dir`` file by file, keeping the
    files there that are not ours."""
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        yield tmp
        _publish_into(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_tokenizer(folder: Path):
    """The tokenizer of a model folder (a hub Marian folder or an a2d one), with a one-line error otherwise."""
    if not folder.is_dir():
        raise BadValue("tokenizer", folder, "not a folder (give a model folder with its tokenizer files)")
    if (folder / "config.json").is_file():
        resolve_model_dir(folder)  # refuses another model family
    return Vocabulary.load(folder)


def _check_options(out_dir: Path, splits: dict, src_lang: str, tgt_lang: str, vocab_size: int,
                   max_train: int | None, max_len: int) -> None:
    """Reject bad arguments and an ``out_dir`` that must not be overwritten, before any work."""
    missing = [s for s in ("train", "valid") if s not in splits]
    if missing:
        raise UserError(f"prepare needs the split(s) {', '.join(missing)} (got: {', '.join(splits) or 'none'})")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UserError(f"unknown split(s) {', '.join(unknown)} (choose from {', '.join(SPLITS)})")
    for option, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if not lang or not lang.replace("_", "").replace("-", "").isalnum():
            raise BadValue(option, lang, "a language code is letters, digits, '-' or '_'")
    if src_lang == tgt_lang:
        raise BadValue(("src_lang", "tgt_lang"), (src_lang, tgt_lang), "source and target languages must differ")
    if vocab_size <= 4:
        raise BadValue("vocab_size", vocab_size, "must be larger than 4 (pad, unk, bos, eos come first)")
    if max_len < 1:
        raise BadValue("max_len", max_len, "must be at least 1")
    if max_train is not None and max_train < 1:
        raise BadValue("max_train", max_train, "must be at least 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExists(out_dir, "exists and is not a folder")
    check_writable_parent(out_dir)  # the result is made beside out_dir; nothing is created in it yet


def _foreign_files(out_dir: Path) -> list[str]:
    """Names in an existing ``out_dir`` that a previous ``a2d prepare`` did not write there (all, if it is
    not a prepared directory)."""
    if not out_dir.is_dir():
        return []
    present = {p.name for p in out_dir.iterdir()}
    try:
        meta = json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
        ours = set(meta.get("files") or _derived_files(meta)) | {META_FILE}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        ours = set()
    return sorted(present - ours)


def _derived_files(meta: dict) -> list[str]:
    """The files of a directory prepared before ``meta.json`` listed them."""
    names = [SPM_FILE]
    for split in meta["splits"]:
        names += [f"{split}.{meta['src']}", f"{split}.{meta['tgt']}", f"{split}.safetensors"]
    return names


def _publish_into(tmp: Path, out_dir: Path) -> None:
    """``--overwrite``: move the new files into ``out_dir`` one by one, ``meta.json`` last; leave foreign files.

    ``meta.json`` goes first, so that a run killed half-way leaves a folder that is not taken for a prepared one.
    """
    (out_dir / META_FILE).unlink(missing_ok=True)
    for path in sorted(tmp.iterdir(), key=lambda p: p.name == META_FILE):
        os.replace(path, out_dir / path.name)
    tmp.rmdir()


def _read_splits(splits: dict[str, tuple[Path, Path]], max_train: int | None) -> dict[str, Split]:
    data = {}
    for name in SPLITS:
        if name not in splits:
            continue
        src_path, tgt_path = (Path(p) for p in splits[name])
        src, tgt = read_parallel(src_path, tgt_path)
        if name == "train" and max_train is not None:
            src, tgt = src[:max_train], tgt[:max_train]
        data[name] = Split(name, src_path, tgt_path, src, tgt, lines=len(src))
    return data


def _source(path: Path) -> dict:
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}


def _drop_empty(part: Split) -> None:
    keep = [i for i, (s, t) in enumerate(zip(part.src, part.tgt)) if s and t]
    part.dropped_empty = part.lines - len(keep)
    part.src = [part.src[i] for i in keep]
    part.tgt = [part.tgt[i] for i in keep]


def _train_vocab(tmp: Path, train: Split, vocab_size: int, seed: int) -> Vocabulary:
    """Train the joint SentencePiece model into ``tmp`` from a temporary text file, removed afterwards."""
    text = tmp / "spm_train.txt"
    text.write_text("\n".join(train.src + train.tgt) + "\n", encoding="utf-8")
    try:
        model = train_sentencepiece([text], tmp, vocab_size, seed=seed)
    except RuntimeError as e:
        reason = str(e).rsplit("] ", 1)[-1].strip()
        raise BadValue("vocab_size", vocab_size, f"SentencePiece cannot train this vocabulary ({reason})") from None
    finally:
        text.unlink(missing_ok=True)
    return Vocabulary(model)


def encode_split(part: Split, vocab: Vocabulary, max_len: int, drop_long: bool) -> None:
    """Fill ``part.src_ids``/``tgt_ids``; drop (``drop_long``) or cut pairs with a side over ``max_len``."""
    src_ids, tgt_ids = vocab.encode_batch(part.src), vocab.encode_target_batch(part.tgt)
    if drop_long:
        keep = [i for i, (s, t) in enumerate(zip(src_ids, tgt_ids)) if len(s) <= max_len and len(t) <= max_len]
        part.dropped_long = len(src_ids) - len(keep)
        part.src, part.tgt = [part.src[i] for i in keep], [part.tgt[i] for i in keep]
        part.src_ids, part.tgt_ids = [src_ids[i] for i in keep], [tgt_ids[i] for i in keep]
    else:
        part.src_ids = [s[:max_len] for s in src_ids]
        part.tgt_ids = [t[:max_len] for t in tgt_ids]


def _flatten(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(int32 concatenation, int64 offsets of length n+1) of a list of id lists."""
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def write_split(tmp: Path, part: Split, src_lang: str, tgt_lang: str) -> None:
    """Write ``part``'s kept lines as ``{name}.{src_lang}``/``{name}.{tgt_lang}`` and its ids as
    ``{name}.safetensors`` into the folder ``tmp``; ``encode_split`` must have filled the ids."""
    for lang, lines in ((src_lang, part.src), (tgt_lang, part.tgt)):
        (tmp / f"{part.name}.{lang}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    src_tokens, src_offsets = _flatten(part.src_ids)
    tgt_tokens, tgt_offsets = _flatten(part.tgt_ids)
    save_file({"src_tokens": src_tokens, "tgt_tokens": tgt_tokens, "src_offsets": src_offsets,
               "tgt_offsets": tgt_offsets}, str(tmp / f"{part.name}.safetensors"))


def load_meta(data_dir: Path | str) -> dict:
    """The ``meta.json`` of a prepared directory; a :class:`UserError` if ``data_dir`` is not one."""
    data_dir = Path(data_dir)
    path = data_dir / META_FILE
    if not path.is_file():
        raise UserError(f"{data_dir}: not a prepared data directory (no meta.json); run a2d prepare")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); run a2d prepare again") from None
    if not isinstance(meta, dict) or not {"src", "tgt", "splits"} <= meta.keys():
        raise UserError(f"{path}: not written by a2d prepare (missing src/tgt/splits); run a2d prepare again")
    return meta


_ARRAYS = ("src_tokens", "tgt_tokens", "src_offsets", "tgt_offsets")


class ParallelData:
    """One split of a prepared directory, held in memory as flat numpy arrays.

    ``data[i]`` is ``(src_ids, tgt_ids)``, two lists of ints without ``</s>``. ``src_lens``/``tgt_lens`` are
    int64 arrays of shape (n,); ``src_text``/``tgt_text`` the raw sentences (the BLEU references);
    ``meta`` the directory's ``meta.json``.
    """

    def __init__(self, meta: dict, split: str, arrays: dict[str, np.ndarray], src_text: list[str],
                 tgt_text: list[str]):
        self.meta = meta
        self.split = split
        self.src_tokens, self.tgt_tokens = arrays["src_tokens"], arrays["tgt_tokens"]
        self.src_offsets, self.tgt_offsets = arrays["src_offsets"], arrays["tgt_offsets"]
        self.src_lens = np.diff(self.src_offsets)
        self.tgt_lens = np.diff(self.tgt_offsets)
        self.src_text, self.tgt_text = src_text, tgt_text

    @classmethod
    def load(cls, data_dir: Path | str, split: str) -> "ParallelData":
        """Load ``split`` of the prepared directory ``data_dir``."""
        data_dir = Path(data_dir)
        meta = load_meta(data_dir)
        if split not in meta["splits"]:
            raise UserError(f"{data_dir}: no {split!r} split (has: {', '.join(meta['splits'])})"
                            + (f"; run a2d prepare with --{split}-src and --{split}-tgt" if split in SPLITS else ""))
        tensor_file = data_dir / f"{split}.safetensors"
        if not tensor_file.is_file():
            raise UserError(f"{tensor_file}: no such file; run a2d prepare again")
        try:
            arrays = load_file(str(tensor_file))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise UserError(f"{tensor_file}: cannot be read ({e}); run a2d prepare again") from None
        missing = [k for k in _ARRAYS if k not in arrays]
        if missing:
            raise UserError(f"{tensor_file}: not written by a2d prepare (no {', '.join(missing)}); run a2d prepare again")
        src_text = read_lines(data_dir / f"{split}.{meta['src']}")
        tgt_text = read_lines(data_dir / f"{split}.{meta['tgt']}")
        n = len(arrays["src_offsets"]) - 1
        if not (n == len(arrays["tgt_offsets"]) - 1 == len(src_text) == len(tgt_text)):
            raise UserError(f"{data_dir}: the {split} files disagree on the number of sentences; "
                            "run a2d prepare again")
        return cls(meta, split, arrays, src_text, tgt_text)

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} pairs")
        i %= n
        src = self.src_tokens[self.src_offsets[i]:self.src_offsets[i + 1]]
        tgt = self.tgt_tokens[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]
        return src.tolist(), tgt.tolist()


def summary_lines(meta: dict) -> list[str]:
    """Human-readable lines describing a prepared directory (what ``a2d prepare`` prints)."""
    kind = "vocabulary from " + meta["tokenizer"]["from"] if meta.get("tokenizer") else "joint SentencePiece vocabulary"
    lines = [f"{meta['src']}-{meta['tgt']}: {kind} of {meta['vocab_size']} pieces, "
             f"train pairs up to {meta['max_len']} subwords"]
    for name, s in meta["splits"].items():
        lines.append(f"  {name:<5} {s['lines']:>8} lines  {s['kept']:>8} kept  {s['dropped_empty']:>6} dropped "
                     f"(empty side)  {s['dropped_long']:>6} dropped (longer than {meta['max_len']})")
    return lines


__all__ = ["prepare", "load_meta", "ParallelData", "summary_lines", "META_FILE"]
