"""The joint SentencePiece vocabulary shared by teacher and student.

Ids are fixed by training: ``<pad>``=0, ``<unk>``=1, ``<s>``=2 (decoder start), ``</s>``=3 (end of sentence).
A data directory, and every checkpoint, carries the model file as ``sentencepiece.model``; a checkpoint
also carries it as a Hugging Face ``MarianTokenizer`` (:func:`a2d.tokenizer.write_marian_tokenizer`).
A tokenizer brought with a hub teacher is :class:`a2d.tokenizer.MarianVocabulary` (:meth:`Vocabulary.load`).
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import sentencepiece as spm

from a2d.errors import BadValue
from a2d.tokenizer import MarianVocabulary, is_marian_tokenizer_folder, write_marian_tokenizer
from a2d.utils import UserError, sha256_file

SPM_FILE = "sentencepiece.model"
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_sentencepiece(text_files: list[Path], out_dir: Path, vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0, input_sentence_size: int = 2_000_000, seed: int = 1) -> Path:
    """Train one joint model over ``text_files`` (plain text, a sentence per line); return its path.

    The sentences are streamed to the trainer rather than named by path, so the model file records no input
    path and the same text gives the same file byte for byte (a retrained vocabulary matches a stored one).
    """
    out_dir = Path(out_dir)

    def sentences():
        for path in text_files:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\n")

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, pad_id=PAD, unk_id=UNK, bos_id=BOS,
        eos_id=EOS, input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        hard_vocab_limit=False, minloglevel=2, num_threads=2,
    )
    path = out_dir / SPM_FILE
    path.write_bytes(model.getvalue())
    return path


class Vocabulary:
    """Encode text to ids and back with a SentencePiece model."""

    def __init__(self, model_file: Path | str):
        self.path = Path(model_file)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no SentencePiece model here")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            reason = "not a SentencePiece model" if "could not parse" in str(e) else str(e)
            raise UserError(f"{self.path}: cannot be loaded ({reason})") from None
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise UserError(f"{self.path}: special ids are not pad=0 unk=1 bos=2 eos=3; "
                            "prepare the data with `a2d prepare`")
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD, UNK, BOS, EOS
        self.decoder_start_id = BOS
        self.layout: dict = {}  # a student on this vocabulary takes a2d's own ids (models.marian_config)

    @classmethod
    def load(cls, directory: Path | str):
        """The tokenizer of a data directory or a model folder.

        ``sentencepiece.model`` (a2d's own) gives a :class:`Vocabulary`; a Hugging Face Marian tokenizer
        (``source.spm``, ``target.spm``, ``vocab.json``, e.g. a hub teacher's, or data prepared with
        ``a2d prepare --tokenizer``) gives an :class:`a2d.tokenizer.MarianVocabulary`. Both offer the same methods.
        """
        directory = Path(directory)
        if not (directory / SPM_FILE).is_file():
            if is_marian_tokenizer_folder(directory):
                return MarianVocabulary(directory)
            if directory.is_dir():
                raise UserError(f"{directory}: no tokenizer here (neither {SPM_FILE} nor a Marian tokenizer's "
                                "source.spm, target.spm and vocab.json)")
        return cls(directory / SPM_FILE)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without ``</s>``."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    # one joint model: the target side is encoded as the source side
    encode_target = encode
    encode_target_batch = encode_batch

    def decode(self, ids) -> str:
        """Detokenised text; special ids are dropped."""
        return self.sp.decode([int(i) for i in ids if int(i) > EOS])

    def pieces(self, ids) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    target_pieces = pieces

    def piece_ids(self, pieces: list[str]) -> list[int]:
        return [self.sp.piece_to_id(p) for p in pieces]

    def save(self, directory: Path | str, model_folder: bool = False, max_length: int | None = None) -> None:
        """Copy ``sentencepiece.model`` into ``directory``; for a model folder (``model_folder``) also the
        MarianTokenizer files, so that ``AutoTokenizer.from_pretrained(directory)`` loads it (``max_length``: the
        model's positions, the tokenizer's ``model_max_length``)."""
        target = Path(directory) / SPM_FILE
        if not target.exists() or not target.samefile(self.path):
            shutil.copyfile(self.path, target)
        if model_folder:
            positions = {} if max_length is None else {"max_length": max_length}
            write_marian_tokenizer(directory, self.path, **positions)

    def checksum(self) -> str:
        return sha256_file(self.path)

    @property
    def id_files(self) -> str:
        """The files that decide the ids, for messages."""
        return SPM_FILE

    @property
    def prepare_option(self) -> tuple[str, Path]:
        """The parameter of :func:`a2d.data.prepare.prepare` (``a2d prepare``'s option) that encodes data with this
        tokenizer, and its value."""
        return "vocab", self.path


def check_same_vocabulary(model_vocab, data_vocab, option: str, model, data_dir: Path | str) -> None:
    """Refuse a model (the parameter ``option``'s value ``model``, e.g. ``"teacher", RUN``) whose tokenizer is not
    the data directory's: a :class:`~a2d.errors.BadValue` naming both sides' files (``sentencepiece.model``, or a
    Marian tokenizer's) and the parameter of :func:`a2d.data.prepare.prepare` that encodes data with the model's."""
    if model_vocab.checksum() == data_vocab.checksum():
        return
    name, value = model_vocab.prepare_option
    raise BadValue(option, model, f"trained with another vocabulary than {data_dir} (its {model_vocab.id_files} and "
                   f"the data directory's {data_vocab.id_files} differ); prepare the data with {{{name}}} (a2d "
                   "prepare)", **{name: value})
