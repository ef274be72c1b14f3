"""The joint SentencePiece vocabulary shared by teacher and student.

Ids are fixed by training: ``<pad>``=0, ``<unk>``=1, ``<s>``=2 (decoder start), ``</s>``=3 (end of sentence).
A data directory, and every checkpoint, carries the model file as ``sentencepiece.model``.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import sentencepiece as spm

from a2d.utils import UserError

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

    @classmethod
    def load(cls, directory: Path | str) -> "Vocabulary":
        """Load ``sentencepiece.model`` from a data directory or a checkpoint directory."""
        return cls(Path(directory) / SPM_FILE)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without ``</s>``."""
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids) -> str:
        """Detokenised text; special ids are dropped."""
        return self.sp.decode([int(i) for i in ids if int(i) > EOS])

    def save(self, directory: Path | str) -> None:
        shutil.copyfile(self.path, Path(directory) / SPM_FILE)

    def checksum(self) -> str:
        from a2d.utils import sha256_file

        return sha256_file(self.path)
