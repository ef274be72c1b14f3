"""``a2d shortlist``: a lexical shortlist for a CTranslate2 export, as CTranslate2's vocabulary map (``vmap.txt``).

A decoder step's output layer costs ``d_model x V``; with a 58k vocabulary that is most of a small student's step.
CTranslate2 can restrict it per batch (``translate_batch(..., use_vmap=True)``) to the union of

* the target pieces listed on the line ``<TAB>piece piece ...`` (always allowed; CTranslate2 adds ``<unk>``, the
  decoder's start token and ``</s>`` itself), and
* the pieces listed on the line ``SOURCE_PIECE<TAB>piece piece ...`` of every source piece in the batch

(and any target prefix). The file ``vmap.txt`` in the model folder is read when the model is loaded; pieces are
those of the model's vocabulary files, and a piece the vocabulary lacks silently becomes ``<unk>``.

This module builds the map from a prepared data directory's ``train`` split, with numpy only:

* the lexical table: for each source piece ``s``, its ``top_n`` target pieces ``t`` by the Dice coefficient over
  sentence pairs, ``2 c(s, t) / (c(s) + c(t))``, where ``c`` counts the training pairs in which a piece (or both)
  occur; only pieces that co-occur with ``s`` at least once; ties go to the smaller id;
* the source piece itself, where the target vocabulary has that piece (names and numbers are copied);
* always: the ``frequent`` most frequent target pieces of the training targets (then the smallest ids, so that
  ``frequent`` >= the vocabulary's size allows every piece) and the tokenizer's special tokens.

The co-occurrences are counted in blocks of source pieces (:func:`lexical_table`), so that memory stays near
``max_pairs`` pairs plus the corpus whatever the vocabulary's size. :func:`write_shortlist` writes ``vmap.txt``
and ``a2d_shortlist.json`` (the settings, and the map's sha256) into an ``a2d export`` folder, each replaced
whole. :class:`a2d.translator.CT2Translator` decodes with it when asked (``a2d translate/evaluate --shortlist``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

import a2d
from a2d.data.prepare import ParallelData
from a2d.data.vocab import Vocabulary, check_same_vocabulary
from a2d.defaults import SHORTLIST_FREQUENT, SHORTLIST_TOP_N
from a2d.errors import BadValue, OutputUnwritable
from a2d.export import ct2_order, is_exported, read_settings
from a2d.utils import UserError, atomic_write_text, check_writable_dir, read_json, sha256_file

VMAP_FILE = "vmap.txt"
INFO_FILE = "a2d_shortlist.json"
DEFAULT_TOP_N = SHORTLIST_TOP_N
DEFAULT_FREQUENT = SHORTLIST_FREQUENT
MAX_PAIRS = 1 << 24  # (source piece, target piece) pairs counted at once
COVERAGE_SENTENCES = 1000  # valid sentences the summary's coverage is measured on


# =============================================================================================== the table
def _presence(tokens: np.ndarray, offsets: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sentence, id) of every distinct id of every sentence, sorted by sentence then id."""
    sentence = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    keys = np.unique(sentence * size + tokens.astype(np.int64))
    return keys // size, keys % size


def _pair_keys(src_ids: np.ndarray, sentences: np.ndarray, tgt_starts: np.ndarray, tgt_lens: np.ndarray,
               tgt_ids: np.ndarray, tgt_size: int) -> np.ndarray:
    """``s * tgt_size + t`` for every source occurrence ``(s, sentence)`` and every distinct target id ``t`` of that
    sentence."""
    lens = tgt_lens[sentences]
    first = np.repeat(tgt_starts[sentences] - (np.cumsum(lens) - lens), lens)
    return np.repeat(src_ids, lens) * tgt_size + tgt_ids[first + np.arange(int(lens.sum()))]


def _merge(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


def cooccurrences(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray], src_size: int,
                  tgt_size: int, max_pairs: int = MAX_PAIRS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The sentence co-occurrence counts of source and target ids, as ``(keys, counts)`` with ``key = s * tgt_size
    + t`` (sorted), in blocks of whole source ids in increasing order. ``src`` and ``tgt`` are ``(tokens, offsets)``
    of one corpus; about ``max_pairs`` pairs are enumerated at a time."""
    src_sent, src_id = _presence(*src, src_size)
    order = np.argsort(src_id, kind="stable")
    occ_id, occ_sent = src_id[order], src_sent[order]
    tgt_sent, tgt_ids = _presence(*tgt, tgt_size)
    tgt_lens = np.bincount(tgt_sent, minlength=len(tgt[1]) - 1)
    tgt_starts = np.cumsum(tgt_lens) - tgt_lens
    cum = np.concatenate([[0], np.cumsum(tgt_lens[occ_sent])])
    pending = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # the counts of a source id the last slice cut
    lo, n = 0, len(occ_id)
    while lo < n:
        hi = min(max(int(np.searchsorted(cum, cum[lo] + max_pairs, side="right")) - 1, lo + 1), n)
        keys, counts = np.unique(_pair_keys(occ_id[lo:hi], occ_sent[lo:hi], tgt_starts, tgt_lens, tgt_ids, tgt_size),
                                 return_counts=True)
        if len(pending[0]):
            keys, counts = _merge(np.concatenate([pending[0], keys]), np.concatenate([pending[1], counts]))
        cut = len(keys) if hi == n or occ_id[hi] != occ_id[hi - 1] else int(np.searchsorted(keys, occ_id[hi] * tgt_size))
        yield keys[:cut], counts[:cut]
        pending = keys[cut:], counts[cut:]
        lo = hi


def lexical_table(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray], src_size: int,
                  tgt_size: int, top_n: int, max_pairs: int = MAX_PAIRS) -> tuple[np.ndarray, np.ndarray]:
    """For each source id, its ``top_n`` target ids by Dice (the module's docstring), best first: ``(rows, targets)``,
    two arrays sorted by source id (``targets[rows == s]`` is the list of ``s``)."""
    src_df = np.bincount(_presence(*src, src_size)[1], minlength=src_size)
    tgt_df = np.bincount(_presence(*tgt, tgt_size)[1], minlength=tgt_size)
    rows, targets = [], []
    for keys, counts in cooccurrences(src, tgt, src_size, tgt_size, max_pairs):
        s, t = keys // tgt_size, keys % tgt_size
        dice = 2.0 * counts / (src_df[s] + tgt_df[t])
        order = np.lexsort((t, -dice, s))
        s, t = s[order], t[order]
        keep = np.arange(len(s)) - np.searchsorted(s, s) < top_n  # rank within its source id
        rows.append(s[keep])
        targets.append(t[keep])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(targets)


def frequent_targets(tgt_tokens: np.ndarray, tgt_size: int, k: int) -> np.ndarray:
    """The ``k`` most frequent target ids (occurrences), ties and unseen ids by increasing id."""
    counts = np.bincount(tgt_tokens.astype(np.int64), minlength=tgt_size)
    return np.lexsort((np.arange(tgt_size), -counts))[:k]


# =============================================================================================== the file
def ct2_vocabularies(folder: Path) -> tuple[list[str], list[str]]:
    """The source and target pieces of an exported model, in the model's id order (the ids of data prepared with
    its tokenizer): its vocabulary files, with the ids the export moved first (``front_ids`` in ``a2d_export.json``,
    :func:`a2d.export.front_order`) put back."""
    source, target = ct2_files_vocabularies(folder)
    settings = read_settings(folder) if is_exported(folder) else {}
    front = settings.get("front_ids")
    if not front:
        return source, target

    def model_order(pieces: list[str]) -> list[str]:
        back = [""] * len(pieces)
        for j, i in enumerate(ct2_order(front, len(pieces))):
            back[i] = pieces[j]
        return back

    return (model_order(source) if settings.get("shared_vocabulary") else source), model_order(target)


def ct2_files_vocabularies(folder: Path) -> tuple[list[str], list[str]]:
    """The source and target pieces of a CTranslate2 model folder, in CTranslate2's id order (its vocabulary files)."""
    def read(names: tuple[str, ...]) -> list[str] | None:
        for name in names:
            value = read_json(folder / name, hint="export the model again")
            if value is not None:
                if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                    raise UserError(f"{folder / name}: not a CTranslate2 vocabulary (a JSON list of pieces)")
                return value
        return None

    shared = read(("shared_vocabulary.json",))
    source, target = shared or read(("source_vocabulary.json",)), shared or read(("target_vocabulary.json",))
    if source is None or target is None:
        raise UserError(f"{folder}: no CTranslate2 vocabulary here (shared_vocabulary.json, or "
                        "source_vocabulary.json and target_vocabulary.json); export the model again")
    return source, target


def shifting_tokens(folder: Path, always: set[str]) -> list[str]:
    """The target pieces whose position in a batch's restricted output layer can change from batch to batch, of
    those CTranslate2 maps into it (the decoder's start token, ``</s>``, the pieces the export suppresses), given the
    pieces a map ``always`` allows: a piece after the first one that is not always allowed.

    Such a piece is decoded wrongly after the first batch: CTranslate2 (4.x) keeps the restricted position these
    pieces had in a translator's first batch for every later one (``Decoder::update_output_layer`` adds to its map
    from vocabulary ids to restricted ids without clearing it), so a later batch starts the decoder from another
    piece's embedding, or stops with ``vector::_M_range_check``. a2d's own models start from ``<s>`` among the
    first ids, which every map allows; OPUS-MT's start from ``<pad>``, the last id."""
    config = read_json(folder / "config.json", default={}) or {}
    mapped = {config.get("decoder_start_token"), config.get("eos_token"),
              *read_settings(folder).get("suppress_tokens", [])}
    fixed = always | {config.get("unk_token"), config.get("bos_token"), config.get("eos_token")}
    target = ct2_files_vocabularies(folder)[1]
    gap = next((i for i, piece in enumerate(target) if piece not in fixed), len(target))
    return [piece for i, piece in enumerate(target) if i > gap and piece in mapped]


def always_allowed(folder: Path) -> set[str]:
    """The target pieces the vocabulary map of ``folder`` allows in every batch (its lines with an empty source)."""
    with open(Path(folder) / VMAP_FILE, encoding="utf-8") as f:
        return {piece for line in f if line.startswith("\t") for piece in line[1:].split()}


def check_batches_decode_alike(folder: Path, always: set[str]) -> None:
    """Refuse a shortlist CTranslate2 would decode wrongly after a translator's first batch
    (:func:`shifting_tokens`)."""
    shifting = shifting_tokens(folder, always)
    if shifting:
        try:
            installed = f"CTranslate2 {version('ctranslate2')}"
        except PackageNotFoundError:
            installed = "CTranslate2"
        raise BadValue("model", folder, f"a shortlist would give it wrong translations: {installed} keeps the "
                       f"position of {', '.join(shifting)} in a batch's shortened output layer from the first batch "
                       f"for every later one, and this model's vocabulary puts "
                       f"{'it' if len(shifting) == 1 else 'them'} after pieces a shortlist leaves out (OPUS-MT's "
                       "layout: <pad>, the decoder's start token, is the last id); decode it without a shortlist")


def _writable(piece: str) -> bool:
    """Whether CTranslate2's reader keeps ``piece`` whole: it splits lines at ``\\n`` and pieces at spaces and tabs."""
    return bool(piece) and not any(c in piece for c in " \t\n\r")


def vmap_text(rows: np.ndarray, targets: np.ndarray, always: list[int], src_pieces: list[str],
              tgt_pieces: list[str]) -> tuple[str, int]:
    """The text of ``vmap.txt`` and its number of source lines: the always-allowed line first, then one line per
    source piece that has a list (the table's, then the piece itself where the target vocabulary has it). A piece
    the file cannot hold (empty, or with white space that CTranslate2 would split it at) is refused, naming it."""
    tgt_index = {piece: i for i, piece in enumerate(tgt_pieces)}
    bounds = np.searchsorted(rows, np.arange(len(src_pieces) + 1))

    def pieces(ids) -> str:
        bad = next((tgt_pieces[i] for i in ids if not _writable(tgt_pieces[i])), None)
        if bad is not None:
            raise UserError(f"the target piece {bad!r} is empty or holds white space; CTranslate2's vocabulary map "
                            "cannot hold it")
        return " ".join(tgt_pieces[i] for i in ids)

    lines = ["\t" + pieces(dict.fromkeys(always))]
    for s, piece in enumerate(src_pieces):
        ids = targets[bounds[s]:bounds[s + 1]].tolist()
        copy = tgt_index.get(piece)
        if copy is not None and copy not in ids:
            ids.append(copy)
        if not ids:
            continue
        if not _writable(piece):
            raise UserError(f"the source piece {piece!r} is empty or holds white space; CTranslate2's vocabulary map "
                            "cannot hold it")
        lines.append(piece + "\t" + pieces(ids))
    return "".join(line + "\n" for line in lines), len(lines) - 1


def _check(data_dir: Path, model: Path, top_n: int, frequent: int) -> tuple[ParallelData, Vocabulary]:
    """Every input checked before any work: the numbers, the export folder, the data and their vocabularies."""
    if top_n < 1:
        raise BadValue("top_n", top_n, "must be at least 1")
    if frequent < 0:
        raise BadValue("frequent", frequent, "must be at least 0")
    if not is_exported(model):
        raise BadValue("model", model, "not an a2d export (no a2d_export.json and model.bin); make one with "
                       "`a2d export --model RUN --out DIR`")
    train = ParallelData.load(data_dir, "train")  # one line for a missing or damaged data directory
    vocab = Vocabulary.load(model)
    check_same_vocabulary(vocab, Vocabulary.load(data_dir), "model", model, data_dir)
    try:
        check_writable_dir(model)
    except OutputUnwritable as e:
        raise BadValue("model", model, e.problem) from None
    return train, vocab


def write_shortlist(data_dir: Path | str, model: Path | str, top_n: int = DEFAULT_TOP_N,
                    frequent: int = DEFAULT_FREQUENT, log: Callable[[str], None] = print) -> dict:
    """Build the shortlist of ``data_dir``'s train split and write ``vmap.txt`` and ``a2d_shortlist.json`` into the
    ``a2d export`` folder ``model`` (each replaced whole; nothing is written on an error). Returns the settings
    written, with ``coverage`` (:func:`coverage`) where the data has a valid split."""
    data_dir, model = Path(data_dir), Path(model)
    train, vocab = _check(data_dir, model, top_n, frequent)
    src_pieces, tgt_pieces = ct2_vocabularies(model)
    src, tgt = (train.src_tokens, train.src_offsets), (train.tgt_tokens, train.tgt_offsets)
    for side, tokens, pieces in (("source", train.src_tokens, src_pieces), ("target", train.tgt_tokens, tgt_pieces)):
        if len(tokens) and int(tokens.max()) >= len(pieces):
            raise BadValue("data_dir", data_dir, f"its {side} ids go up to {int(tokens.max())}, past the {len(pieces)} "
                           "pieces of {model}'s vocabulary; prepare the data with the model's tokenizer", model=model)
    rows, targets = lexical_table(src, tgt, len(src_pieces), len(tgt_pieces), top_n)
    suppressed = set(read_settings(model).get("suppress_tokens", []))
    specials = [vocab.pad_id, vocab.unk_id, vocab.decoder_start_id, vocab.eos_id,
                *(i for i, piece in enumerate(tgt_pieces) if piece in suppressed)]
    always = [*specials, *frequent_targets(train.tgt_tokens, len(tgt_pieces), frequent).tolist()]
    check_batches_decode_alike(model, {tgt_pieces[i] for i in always})
    text, lines = vmap_text(rows, targets, always, src_pieces, tgt_pieces)
    info = {"format": 1, "score": "dice", "top_n": top_n, "frequent": frequent, "always": len(set(always)),
            "source_lines": lines, "data": str(data_dir.resolve()), "train_pairs": len(train),
            "vmap_sha256": None, "a2d_version": a2d.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if "valid" in train.meta["splits"]:
        info["coverage"] = coverage(ParallelData.load(data_dir, "valid"), rows, targets, always, src_pieces,
                                    tgt_pieces)
    atomic_write_text(model / VMAP_FILE, text)
    info["vmap_sha256"] = sha256_file(model / VMAP_FILE)
    atomic_write_text(model / INFO_FILE, json.dumps(info, indent=2) + "\n")
    log(f"wrote {model / VMAP_FILE}: {lines} source pieces, each with up to {top_n} target pieces (Dice over "
        f"{len(train)} train pairs) and itself; {info['always']} always allowed ({frequent} most frequent and the "
        f"special tokens), of {len(tgt_pieces)}")
    if "coverage" in info:
        c = info["coverage"]
        log(f"valid: a sentence allows {c['allowed_mean']:.0f} target pieces on average ({c['allowed_share']:.1%} "
            f"of the vocabulary); its reference's pieces are {c['recall']:.2%} inside ({c['sentences']} sentences)")
    log("decode with it: a2d translate/evaluate --model " + str(model) + " --shortlist")
    return info


def coverage(data: ParallelData, rows: np.ndarray, targets: np.ndarray, always: list[int], src_pieces: list[str],
             tgt_pieces: list[str], sentences: int = COVERAGE_SENTENCES) -> dict:
    """How a shortlist does on the first ``sentences`` pairs of ``data``, one sentence at a time (a batch allows the
    union of its sentences'): the mean number of allowed target pieces, its share of the vocabulary, and the share
    of the references' pieces that are allowed (``recall``; a reference piece outside cannot be produced)."""
    tgt_index = {piece: i for i, piece in enumerate(tgt_pieces)}
    copies = np.array([tgt_index.get(p, -1) for p in src_pieces], dtype=np.int64)
    bounds = np.searchsorted(rows, np.arange(len(src_pieces) + 1))
    fixed = np.asarray(always, dtype=np.int64)
    sizes, inside, total = [], 0, 0
    for i in range(min(sentences, len(data))):
        src_ids, tgt_ids = data[i]
        lists = [targets[bounds[s]:bounds[s + 1]] for s in set(src_ids) if s < len(src_pieces)]
        found = copies[[s for s in src_ids if s < len(src_pieces)]]
        allowed = np.unique(np.concatenate([fixed, found[found >= 0], *lists]))
        sizes.append(len(allowed))
        inside += int(np.isin(tgt_ids, allowed).sum())
        total += len(tgt_ids)
    mean = float(np.mean(sizes)) if sizes else 0.0
    return {"sentences": len(sizes), "allowed_mean": round(mean, 1), "allowed_share": round(mean / len(tgt_pieces), 4),
            "recall": round(inside / total, 4) if total else None}


# =============================================================================================== reading it
def describe(folder: Path | str) -> str | None:
    """One line on the vocabulary map of a CTranslate2 folder (None without ``vmap.txt``): its settings where
    ``a2d_shortlist.json`` describes this very file, else that a2d did not write it."""
    folder = Path(folder)
    vmap = folder / VMAP_FILE
    if not vmap.is_file():
        return None
    info = read_json(folder / INFO_FILE, default=None)
    if not isinstance(info, dict) or info.get("vmap_sha256") != sha256_file(vmap):
        return f"{vmap} (not described by a2d shortlist's {INFO_FILE}: written by hand, or changed since)"
    return (f"{vmap}: top {info['top_n']} target pieces per source piece by {info['score']}, {info['always']} always "
            f"allowed, from {info['data']}")


__all__ = ["write_shortlist", "lexical_table", "cooccurrences", "frequent_targets", "vmap_text", "coverage",
           "describe", "ct2_vocabularies", "ct2_files_vocabularies", "shifting_tokens", "check_batches_decode_alike",
           "always_allowed", "VMAP_FILE", "INFO_FILE", "DEFAULT_TOP_N", "DEFAULT_FREQUENT"]
