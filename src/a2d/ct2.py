"""Translating with an exported CTranslate2 folder (``a2d export``): what ``a2d translate`` and ``a2d evaluate``
use when ``--model`` is one.

:class:`CT2Model` decodes as :func:`a2d.evaluate.translate` does with Hugging Face: the same tokenizer,
sources cut to the model's positions and closed with ``</s>``, batches of at most ``max_tokens`` source
tokens (longest first), at most ``int(max_len_a * longest + max_len_b)`` new tokens per batch, beam search
or greedy (``beam=1``). CTranslate2 runs it with ``threads`` intra-op threads.
"""
from __future__ import annotations

import json
from pathlib import Path

from a2d.export import EXPORT_FILE, is_exported
from a2d.utils import UserError


class CT2Model:
    is_ctranslate2 = True

    def __init__(self, folder: Path | str, threads: int = 1, device: str = "cpu", compute_type: str = "default"):
        from a2d.data.vocab import Vocabulary
        from a2d.export import require_ctranslate2

        ctranslate2 = require_ctranslate2()

        self.folder = Path(folder)
        if not is_exported(self.folder):
            raise UserError(f"{self.folder}: not an a2d export (no {EXPORT_FILE} and model.bin)")
        if threads < 1:
            raise UserError(f"--threads {threads}: must be at least 1")
        try:
            self.settings = json.loads((self.folder / EXPORT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{self.folder / EXPORT_FILE}: not valid JSON ({e})") from None
        self.vocab = Vocabulary.load(self.folder)
        try:
            self.translator = ctranslate2.Translator(str(self.folder), device=device, compute_type=compute_type,
                                                     intra_threads=int(threads), inter_threads=1)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{self.folder}: CTranslate2 cannot load it ({str(e).splitlines()[0]})") from None
        self.limit = max(1, int(self.settings.get("max_position_embeddings", 512)) - 1)
        self.suppress = [[t] for t in self.settings.get("suppress_tokens", [])] or None
        self.forced_eos = int(bool(self.settings.get("forced_eos")))

    def to(self, device):  # the evaluation code moves models; a CTranslate2 model stays where it was loaded
        return self

    def translate(self, sources: list[str], beam: int = 5, max_len_a: float = 1.2, max_len_b: int = 10,
                  max_tokens: int = 6000, progress: bool = False) -> list[str]:
        from a2d.data.batching import fill_batches

        if beam < 1:
            raise ValueError(f"beam={beam}: must be >= 1")
        sources = list(sources)
        hypotheses = [""] * len(sources)
        encoded = {i: self.vocab.encode(text)[:self.limit] + [self.vocab.eos_id]
                   for i, text in enumerate(sources) if text is not None and text.strip()}
        order = sorted(encoded, key=lambda i: (-len(encoded[i]), i))
        for batch in fill_batches(order, {i: len(encoded[i]) for i in order}, max(1, int(max_tokens))):
            longest = max(len(encoded[i]) for i in batch)
            results = self.translator.translate_batch(
                [self.vocab.pieces(encoded[i]) for i in batch], beam_size=beam, length_penalty=1.0,
                max_decoding_length=max(1, min(int(max_len_a * longest + max_len_b), self.limit) - self.forced_eos),
                max_batch_size=0, suppress_sequences=self.suppress, return_scores=False)
            for i, result in zip(batch, results):
                ids = self.vocab.piece_ids(result.hypotheses[0])
                hypotheses[i] = self.vocab.decode(ids).replace("\n", " ").strip()
        return hypotheses


__all__ = ["CT2Model"]
