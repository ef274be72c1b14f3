"""Tokenizers: a2d's own joint SentencePiece vocabulary, and a Hugging Face Marian tokenizer you bring.

Everything in a2d that turns text into ids and back goes through one small interface, which both
:class:`a2d.data.vocab.Vocabulary` (``sentencepiece.model``, ids pad=0 unk=1 bos=2 eos=3) and
:class:`MarianVocabulary` (a hub folder's ``source.spm``, ``target.spm`` and ``vocab.json``) offer::

    encode(text) / encode_batch(texts)                 source side, without </s>
    encode_target(text) / encode_target_batch(texts)   target side, without </s>
    decode(ids)                                        target ids to text, special ids dropped
    pad_id, unk_id, eos_id, decoder_start_id           special ids (a Marian hub model starts from pad)
    len(tok), checksum(), save(folder), layout         size, identity, files, embedding layout

``layout`` is what a student built on data encoded with this tokenizer takes from it (special ids,
vocabulary sizes, shared/tied embeddings), as :class:`transformers.MarianConfig` keyword arguments, and the
ids it never generates (``bad_words_ids``, a generation setting: OPUS-MT's ``[[<pad>]]``).

:func:`write_marian_tokenizer` writes the files that make an a2d model folder load with
``AutoTokenizer.from_pretrained``: ``source.spm`` and ``target.spm`` (both the joint model), a
``vocab.json`` whose ids are the SentencePiece ids, and ``tokenizer_config.json``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from a2d.utils import UserError, read_json

SOURCE_SPM, TARGET_SPM, VOCAB_JSON, TARGET_VOCAB_JSON = "source.spm", "target.spm", "vocab.json", "target_vocab.json"
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP = "tokenizer_config.json", "special_tokens_map.json"
#: Written beside a brought tokenizer in a data directory: the ids and embedding layout of its model.
LAYOUT_FILE = "a2d_tokenizer.json"
#: ``MarianConfig`` keys a student takes from the teacher's tokenizer and config.
LAYOUT_KEYS = ("vocab_size", "decoder_vocab_size", "pad_token_id", "eos_token_id", "bos_token_id",
               "decoder_start_token_id", "forced_eos_token_id", "share_encoder_decoder_embeddings",
               "tie_word_embeddings")
#: Generation settings a student takes from the teacher's ``generation_config.json`` (kept out of its ``MarianConfig``).
GENERATION_KEYS = ("bad_words_ids",)
#: ``a2d prepare`` refuses a tokenizer that maps more than this share of the corpus's pieces to <unk>.
MAX_UNKNOWN_RATE = 0.01


def is_marian_tokenizer_folder(folder: Path | str) -> bool:
    folder = Path(folder)
    return (folder / SOURCE_SPM).is_file() and (folder / VOCAB_JSON).is_file()


def write_marian_tokenizer(folder: Path | str, spm_path: Path | str, max_length: int = 512) -> None:
    """Write MarianTokenizer files for a2d's joint SentencePiece model ``spm_path`` into ``folder``.

    ``vocab.json`` maps every piece to its SentencePiece id, so ``MarianTokenizer`` encodes and decodes
    exactly as :class:`a2d.data.vocab.Vocabulary` does (pad=0 unk=1 bos=2 eos=3).
    """
    import sentencepiece as spm

    folder = Path(folder)
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    pieces = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    shutil.copyfile(spm_path, folder / SOURCE_SPM)
    shutil.copyfile(spm_path, folder / TARGET_SPM)
    (folder / VOCAB_JSON).write_text(json.dumps(pieces, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    special = {"unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>", "bos_token": "<s>"}
    config = {"tokenizer_class": "MarianTokenizer", **special, "model_max_length": int(max_length),
              "separate_vocabs": False, "clean_up_tokenization_spaces": False}
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (folder / SPECIAL_TOKENS_MAP).write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def set_model_max_length(folder: Path | str, max_length: int) -> None:
    """Make ``folder``'s ``tokenizer_config.json`` say that its model takes ``max_length`` tokens (``</s>``
    included): ``tok(texts, truncation=True)`` then cuts a source to what the model's positions hold."""
    path = Path(folder) / TOKENIZER_CONFIG
    config = _json_object(path)
    config.setdefault("tokenizer_class", "MarianTokenizer")
    config["model_max_length"] = int(max_length)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class MarianVocabulary:
    """A Hugging Face Marian tokenizer folder (as downloaded from the hub), behind a2d's tokenizer interface.

    The source side is encoded with ``source.spm``, the target side with ``target.spm``; both map pieces
    to ids through ``vocab.json`` (``target_vocab.json`` too where the folder has separate vocabularies).
    """

    FILES = (SOURCE_SPM, TARGET_SPM, VOCAB_JSON, TARGET_VOCAB_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)

    def __init__(self, folder: Path | str):
        from transformers import MarianTokenizer

        self.folder = Path(folder)
        self.path = self.folder / VOCAB_JSON
        if not is_marian_tokenizer_folder(self.folder):
            raise UserError(f"{self.folder}: no Marian tokenizer here (needs {SOURCE_SPM}, {TARGET_SPM} and {VOCAB_JSON})")
        _check_tokenizer_files(self.folder)
        try:
            import warnings

            with warnings.catch_warnings():  # "Recommended: pip install sacremoses" (only used for language codes)
                warnings.simplefilter("ignore")
                self.hf = MarianTokenizer.from_pretrained(self.folder)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"{self.folder}: cannot load its Marian tokenizer ({str(e).splitlines()[0]})") from None
        self.pad_id, self.unk_id, self.eos_id = self.hf.pad_token_id, self.hf.unk_token_id, self.hf.eos_token_id
        self._source_pieces = {i: p for p, i in self.hf.encoder.items()}  # vocab.json's, id -> piece
        self.layout = self._read_layout()
        self.decoder_start_id = self.layout["decoder_start_token_id"]
        self.bos_id = self.decoder_start_id  # Marian has no <s>: the decoder starts from decoder_start_token_id

    def _read_layout(self) -> dict:
        """The model's ids and embedding layout: from ``a2d_tokenizer.json`` (a data directory), else the
        folder's ``config.json`` and ``generation_config.json`` (a model folder), else what the tokenizer alone
        implies."""
        layout = {}
        for name in (LAYOUT_FILE, "config.json"):
            if (self.folder / name).is_file():
                config = _json_object(self.folder / name)
                layout = {k: config.get(k) for k in LAYOUT_KEYS + GENERATION_KEYS if k in config}
                if name == "config.json" and (self.folder / "generation_config.json").is_file():
                    generation = _json_object(self.folder / "generation_config.json")
                    layout.update({k: generation.get(k) for k in GENERATION_KEYS})
                break
        size = len(self.hf.encoder)
        layout.setdefault("vocab_size", size)
        layout.setdefault("pad_token_id", self.pad_id)
        layout.setdefault("eos_token_id", self.eos_id)
        layout.setdefault("decoder_start_token_id", self.pad_id)
        layout.setdefault("forced_eos_token_id", self.eos_id)
        layout.setdefault("share_encoder_decoder_embeddings", not self.hf.separate_vocabs)
        layout.setdefault("tie_word_embeddings", True)
        if layout.get("decoder_vocab_size") is None:
            layout["decoder_vocab_size"] = layout["vocab_size"]
        if layout.get("bos_token_id") is None:
            layout.pop("bos_token_id", None)
        if "bad_words_ids" not in layout and layout["decoder_start_token_id"] == self.pad_id:
            # not recorded (a tokenizer alone, a data directory prepared before a2d kept it): a decoder that starts
            # from <pad> is OPUS-MT's, whose converter always bars <pad>
            layout["bad_words_ids"] = [[self.pad_id]]
        if (layout["pad_token_id"], layout["eos_token_id"]) != (self.pad_id, self.eos_id):
            raise UserError(f"{self.folder}: the tokenizer's pad/eos ids ({self.pad_id}, {self.eos_id}) are not the "
                            f"model's ({layout['pad_token_id']}, {layout['eos_token_id']})")
        return layout

    def __len__(self) -> int:
        return int(self.layout["vocab_size"])

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.hf(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def encode_target(self, text: str) -> list[int]:
        return self.hf(text_target=text, add_special_tokens=False)["input_ids"]

    def encode_target_batch(self, texts: list[str]) -> list[list[int]]:
        return self.hf(text_target=list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True, use_source_tokenizer=False)

    def pieces(self, ids) -> list[str]:
        """Source ids as the pieces CTranslate2 reads (``vocab.json``'s; MarianTokenizer's own
        ``convert_ids_to_tokens`` reads ``target_vocab.json`` where there is one)."""
        return [self._source_pieces.get(int(i), self.hf.unk_token) for i in ids]

    def target_pieces(self, ids) -> list[str]:
        """Target ids as the pieces CTranslate2 writes."""
        return self.hf.convert_ids_to_tokens([int(i) for i in ids])

    def piece_ids(self, pieces: list[str]) -> list[int]:
        """Target pieces (CTranslate2's output) as ids."""
        target = self.hf.target_encoder if self.hf.separate_vocabs else self.hf.encoder
        return [target.get(p, self.unk_id) for p in pieces]

    def files(self) -> list[Path]:
        return [self.folder / name for name in self.FILES if (self.folder / name).is_file()]

    def save(self, directory: Path | str, model_folder: bool = False, max_length: int | None = None) -> None:
        """Copy the tokenizer's files byte for byte (so the checksum stays); outside a model folder (no
        ``config.json``) also the model's ids and layout, as ``a2d_tokenizer.json``. ``max_length``: the positions
        of the model saved beside it, as ``tokenizer_config.json``'s ``model_max_length`` (the teacher's may be
        longer)."""
        directory = Path(directory)
        for path in self.files():
            shutil.copyfile(path, directory / path.name)
        if not (directory / "config.json").is_file():
            (directory / LAYOUT_FILE).write_text(json.dumps(self.layout, indent=2) + "\n", encoding="utf-8")
        if max_length is not None:
            set_model_max_length(directory, max_length)

    @property
    def id_files(self) -> str:
        """The files that decide the ids, for messages."""
        names = [name for name in (SOURCE_SPM, TARGET_SPM, VOCAB_JSON, TARGET_VOCAB_JSON) if (self.folder / name).is_file()]
        return ", ".join(names[:-1]) + " and " + names[-1]

    @property
    def prepare_option(self) -> tuple[str, Path]:
        """The parameter of :func:`a2d.data.prepare.prepare` (``a2d prepare``'s option) that encodes data with this
        tokenizer, and its value."""
        return "tokenizer", self.folder

    def checksum(self) -> str:
        """sha256 over the files that decide the ids (the two SentencePiece models and the vocabularies)."""
        h = hashlib.sha256()
        for name in (SOURCE_SPM, TARGET_SPM, VOCAB_JSON, TARGET_VOCAB_JSON):
            path = self.folder / name
            h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
        return h.hexdigest()


def _json_object(path: Path, what: str = "settings") -> dict:
    """The JSON object in ``path`` ({} if there is no such file); a one-line error naming the file otherwise."""
    value = read_json(path, default={})
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object of {what}, found a {type(value).__name__}")
    return value


def _check_tokenizer_files(folder: Path) -> None:
    """Refuse, naming the file, a Marian tokenizer folder whose JSON files ``MarianTokenizer`` would choke on (or
    read wrongly): a ``tokenizer_config.json`` of another tokenizer class, a ``vocab.json`` that is not a mapping
    of pieces to ids, or one without the special tokens."""
    config = _json_object(folder / TOKENIZER_CONFIG)
    kind = config.get("tokenizer_class")
    if kind is not None and kind != "MarianTokenizer":
        raise UserError(f"{folder / TOKENIZER_CONFIG}: the tokenizer of this folder is a {kind}, not a MarianTokenizer; "
                        "a2d reads Marian tokenizers only (source.spm, target.spm, vocab.json)")
    _json_object(folder / SPECIAL_TOKENS_MAP)
    special = {key: config.get(key, default) for key, default in
               (("unk_token", "<unk>"), ("eos_token", "</s>"), ("pad_token", "<pad>"))}
    for name in (VOCAB_JSON, TARGET_VOCAB_JSON):
        path = folder / name
        if not path.is_file():
            continue
        vocab = _json_object(path, "pieces and their ids")
        bad = next((f"{piece!r}: {i!r}" for piece, i in vocab.items()
                    if not isinstance(i, int) or isinstance(i, bool) or i < 0), None)
        if bad is not None:
            raise UserError(f"{path}: expected a JSON object of pieces and their ids (integers >= 0), found {bad}")
        absent = [token for token in special.values() if isinstance(token, str) and token not in vocab]
        if absent and name == VOCAB_JSON:
            raise UserError(f"{path}: has no {', '.join(absent)} (the special tokens of {TOKENIZER_CONFIG})")


def collate_ids(vocab) -> dict:
    """The ids :func:`a2d.data.batching.collate` pads, starts and ends sequences with, for this tokenizer."""
    return {"pad_id": vocab.pad_id, "bos_id": vocab.decoder_start_id, "eos_id": vocab.eos_id}


def unknown_rate(ids: list[list[int]], unk_id: int) -> float:
    """The share of pieces that are ``unk_id``."""
    total = sum(len(s) for s in ids)
    return sum(s.count(unk_id) for s in ids) / total if total else 0.0


def check_unknown_rate(src_ids: list[list[int]], tgt_ids: list[list[int]], unk_id: int, what: str,
                       limit: float = MAX_UNKNOWN_RATE) -> tuple[float, float]:
    """Refuse a tokenizer that cannot encode the corpus: more than ``limit`` of either side's pieces unknown."""
    rates = unknown_rate(src_ids, unk_id), unknown_rate(tgt_ids, unk_id)
    if max(rates) > limit:
        raise UserError(f"{what}: {rates[0]:.1%} of the source and {rates[1]:.1%} of the target pieces are "
                        f"<unk> (limit {limit:.1%}); this tokenizer cannot encode the corpus (another language "
                        "pair or script?)")
    return rates


__all__ = ["MarianVocabulary", "collate_ids", "write_marian_tokenizer", "set_model_max_length",
           "is_marian_tokenizer_folder", "check_unknown_rate", "unknown_rate", "LAYOUT_KEYS", "GENERATION_KEYS",
           "MAX_UNKNOWN_RATE"]
