"""Translating: one :class:`Translator` interface, two engines, and :func:`load_translator` to open a folder.

* :class:`HFTranslator`: a Hugging Face ``MarianMTModel`` (a run folder, its ``best/`` or ``last/``, a Marian
  folder, or a model in memory), decoded with ``generate``;
* :class:`CT2Translator`: a CTranslate2 folder written by ``a2d export``, decoded with ``translate_batch``.

Both decode the same way because they share :meth:`BatchTranslator.translate`: each source is encoded with the
model's tokenizer, cut to the model's positions (saying so on standard error, one line per call) and closed
with ``</s>``; blank sources give ``""`` without
being decoded; the rest are sorted longest first and batched so that ``batch size * longest <= max_tokens``
(an engine with several workers, CTranslate2's translators, decodes several of these batches at once);
a batch may generate ``int(max_len_a * longest + max_len_b)`` new tokens (at most the model's positions);
beam search, or greedy with ``beam=1``; the hypotheses come back in the input order, detokenised on one line.
An engine gives only how one batch of token ids is decoded (:meth:`BatchTranslator.generate`).

:meth:`BatchTranslator.translate_ids` gives the same decoding as ids: the tokens the engine generated, one per
decoder step, up to and including ``</s>`` when it ended with one (what a speed benchmark counts; re-encoding the
detokenised text would count something else). With ``force_length=L`` every hypothesis takes exactly ``L``
decoder steps (``</s>`` is held back until then), so that random or weak models are timed on equal work.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import torch

from a2d.config import DEFAULT_BEAM
from a2d.data.batching import fill_batches
from a2d.data.vocab import Vocabulary
from a2d.errors import BadValue
from a2d.export import is_exported, read_settings, require_ctranslate2
from a2d.models import load_model, recorded_beam, resolve_model_dir
from a2d.shortlist import VMAP_FILE, always_allowed, check_batches_decode_alike
from a2d.shortlist import describe as describe_shortlist
from a2d.utils import UserError, read_json


class Translator(Protocol):
    """What ``a2d translate``, ``a2d evaluate`` and the evaluation code need of a model."""

    vocab: Vocabulary  # the tokenizer of its ids (checked against a data directory's)
    name: str  # what it was loaded from, for messages and reports
    device: str  # where it runs: "cpu" or "cuda"
    default_beam: int  # the beam its folder records: a2d translate/evaluate's when given no --beam

    def translate(self, sources: Sequence[str], beam: int = 5, max_len_a: float = 1.2, max_len_b: int = 10,
                  max_tokens: int = 6000, progress: bool = False) -> list[str]:
        """The hypotheses of ``sources`` (detokenised text), in the same order."""
        ...


class BatchTranslator:
    """The decoding both engines share (the module's docstring); an engine sets ``vocab``, ``name``, ``device``
    and ``limit`` (the source and target positions the model has, less one for ``</s>``) and gives :meth:`generate`."""

    vocab: Vocabulary
    name: str
    device: str
    limit: int
    #: the beam a folder records (its generation config's ``num_beams``, an export's ``beam``): what
    #: ``a2d translate`` and ``a2d evaluate`` decode with when given no ``--beam``
    default_beam: int = DEFAULT_BEAM
    #: how many sources the last :meth:`translate_ids` call cut to the model's positions
    truncated: int = 0
    #: how many batches :meth:`generate` may decode at once (from as many threads); 1: one after the other
    workers: int = 1

    @staticmethod
    def notice(message: str) -> None:
        """Tell the user something about the decoding that is not an error (one line, on standard error)."""
        print(message, file=sys.stderr)

    def generate(self, batch: list[list[int]], beam: int, max_new: int, force: bool = False) -> list[list[int]]:
        """The ids each source of ``batch`` (ids closed with ``</s>``) is translated to: the tokens generated, one
        per decoder step, up to and including ``</s>`` when the hypothesis ended with one; at most ``max_new``
        (``force``: exactly ``max_new``) steps."""
        raise NotImplementedError

    def decoding(self) -> contextlib.AbstractContextManager:
        """The state the engine decodes in, entered once per :meth:`translate` call."""
        return contextlib.nullcontext()

    def translate(self, sources: Sequence[str], beam: int = 5, max_len_a: float = 1.2, max_len_b: int = 10,
                  max_tokens: int = 6000, progress: bool = False) -> list[str]:
        return [self.detokenize(ids) for ids in self.translate_ids(sources, beam=beam, max_len_a=max_len_a,
                                                                   max_len_b=max_len_b, max_tokens=max_tokens,
                                                                   progress=progress)]

    def detokenize(self, ids: list[int]) -> str:
        """The text of output ids, on one line."""
        return self.vocab.decode(ids).replace("\n", " ").strip()

    def translate_ids(self, sources: Sequence[str], beam: int = 5, max_len_a: float = 1.2, max_len_b: int = 10,
                      max_tokens: int = 6000, progress: bool = False, force_length: int | None = None
                      ) -> list[list[int]]:
        """The output ids of each source (:meth:`generate`'s, one per decoder step; ``[]`` for a blank source,
        which is not decoded), in the input order. ``force_length=L``: every hypothesis takes exactly ``L`` steps
        whatever the sources' lengths (at most the model's positions less one)."""
        if beam < 1:
            raise ValueError(f"beam={beam}: must be >= 1")
        if force_length is not None and not 1 <= force_length <= self.limit:
            raise BadValue("force_length", force_length, f"must be between 1 and {self.limit} (the positions "
                           f"{self.name} has, less one)")
        sources = list(sources)
        outputs: list[list[int]] = [[] for _ in sources]
        encoded = {i: self.vocab.encode(text) for i, text in enumerate(sources) if text is not None and text.strip()}
        self.truncated = sum(len(ids) > self.limit for ids in encoded.values())
        if self.truncated:
            self.notice(f"a2d: {self.truncated} of {len(encoded)} input lines have more pieces than {self.name} "
                        f"takes; cut to their first {self.limit} (and </s>: the model's {self.limit + 1} positions)")
        encoded = {i: ids[:self.limit] + [self.vocab.eos_id] for i, ids in encoded.items()}
        order = sorted(encoded, key=lambda i: (-len(encoded[i]), i))
        batches = fill_batches(order, {i: len(encoded[i]) for i in order}, max(1, int(max_tokens)))
        if not batches:
            return outputs
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), unit="sent", desc="translate", leave=False)

        def decode(batch: list[int]) -> tuple[list[int], list[list[int]]]:
            if force_length is None:
                longest = max(len(encoded[i]) for i in batch)
                max_new = max(1, min(int(max_len_a * longest + max_len_b), self.limit))
            else:
                max_new = force_length
            return batch, self.generate([encoded[i] for i in batch], beam, max_new, force=force_length is not None)

        try:
            with self.decoding(), contextlib.ExitStack() as stack:
                if self.workers > 1:  # the batches are formed as above whatever the workers: the same outputs
                    pool = stack.enter_context(ThreadPoolExecutor(max_workers=self.workers))
                    decoded = pool.map(decode, batches)
                else:
                    decoded = map(decode, batches)
                for batch, generated in decoded:
                    for i, ids in zip(batch, generated):
                        outputs[i] = ids
                    if bar is not None:
                        bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return outputs


def _through_eos(ids: list[int], eos: int) -> list[int]:
    """``ids`` up to and including the first ``eos`` (all of them without one)."""
    return ids[:ids.index(eos) + 1] if eos in ids else ids


class HFTranslator(BatchTranslator):
    """A Hugging Face ``MarianMTModel`` and its tokenizer; decodes on the device the model is on, in eval mode
    (a model in training mode is put back in it afterwards)."""

    def __init__(self, model, vocab: Vocabulary, name: str = "the model", default_beam: int | None = None):
        self.model, self.vocab, self.name = model, vocab, name
        self.limit = max(1, int(model.config.max_position_embeddings) - 1)
        self.default_beam = default_beam or DEFAULT_BEAM

    @classmethod
    def load(cls, path: Path | str, device: str | None = None) -> "HFTranslator":
        """The model folder ``path`` names (:func:`a2d.models.load_model`), on ``device`` (default: the GPU if
        there is one); its default beam is the ``num_beams`` its generation config records."""
        model, vocab = load_model(path)
        model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        return cls(model, vocab, name=str(path), default_beam=recorded_beam(resolve_model_dir(path)))

    @property
    def device(self) -> str:
        return next(self.model.parameters()).device.type

    @contextlib.contextmanager
    def decoding(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    def generate(self, batch: list[list[int]], beam: int, max_new: int, force: bool = False) -> list[list[int]]:
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.vocab.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        search = {"num_beams": beam, "early_stopping": beam > 1}  # (greedy: the folder's early_stopping unused)
        if force:
            search["min_new_tokens"] = max_new
        device = next(self.model.parameters()).device
        out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                  max_new_tokens=max_new, do_sample=False, **search)
        # each row: the decoder's start token, the generated tokens, then padding after </s>
        return [_through_eos(row[1:], self.vocab.eos_id) for row in out.tolist()]


class CT2Translator(BatchTranslator):
    """A CTranslate2 folder written by ``a2d export``, run as ``translators`` translators (CTranslate2's
    ``inter_threads``: they share the weights and decode different batches at once) of ``threads`` intra-op threads
    each. For batched work on N cores, N translators of one thread were faster than one of N threads on the 2-core
    AMD EPYC measured (docs/ship.md); one sentence at a time gains nothing from more translators.

    The export's settings (:func:`a2d.export.read_settings`) say how to decode as Hugging Face does: the model's
    positions, the ids it never generates (``bad_words_ids``), and whether a hypothesis that reaches the length
    limit ends with a forced ``</s>`` (one token early). As in Hugging Face, ``</s>`` may be the first token
    (CTranslate2's default holds it back for one step).

    ``shortlist=True`` decodes with the folder's vocabulary map (``vmap.txt``, :mod:`a2d.shortlist`): each batch's
    output layer is cut to the target pieces its source pieces allow; a folder without one is refused.
    ``shortlist`` then holds a line describing the map (None when it is off).
    """

    def __init__(self, folder: Path | str, threads: int = 1, device: str = "cpu", compute_type: str = "default",
                 shortlist: bool = False, translators: int = 1):
        ctranslate2 = require_ctranslate2()
        self.folder = Path(folder)
        self.name, self.device = str(folder), device
        for name, value in (("threads", threads), ("translators", translators)):
            if value < 1:
                raise BadValue(name, value, "must be at least 1")
        self.workers = int(translators)
        settings = read_settings(self.folder)
        self.shortlist = describe_shortlist(self.folder) if shortlist else None
        if shortlist and self.shortlist is None:
            raise BadValue("shortlist", True, f"{self.folder} has no {VMAP_FILE}; make one with `a2d shortlist "
                           f"--data DATA --model {self.folder}`")
        if shortlist:  # a map made before a2d refused such models, or by hand
            check_batches_decode_alike(self.folder, always_allowed(self.folder))
        self.vocab = Vocabulary.load(self.folder)
        torch_threads = torch.get_num_threads()
        try:
            self.translator = ctranslate2.Translator(str(self.folder), device=device, compute_type=compute_type,
                                                     intra_threads=int(threads), inter_threads=self.workers)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"{self.folder}: CTranslate2 cannot load it ({str(e).splitlines()[0]})") from None
        finally:
            # CTranslate2 sets OpenMP's thread count to its intra_threads in this thread, and that count is torch's
            # too: without this, a process that decodes with CTranslate2 and then trains (a grid's seq-KD cell)
            # would train on CTranslate2's thread count
            torch.set_num_threads(torch_threads)
        self.limit = max(1, int(settings.get("max_position_embeddings", 512)) - 1)
        self.suppress = [[t] for t in settings.get("suppress_tokens", [])] or None
        self.forced_eos = int(bool(settings.get("forced_eos")))
        self.default_beam = int(settings.get("beam") or DEFAULT_BEAM)
        # an export of format 2 closes the source with </s> itself (config.json's add_source_eos)
        self.adds_eos = bool(read_json(self.folder / "config.json", default={}).get("add_source_eos"))

    def generate(self, batch: list[list[int]], beam: int, max_new: int, force: bool = False) -> list[list[int]]:
        length = ({"min_decoding_length": max_new, "max_decoding_length": max_new} if force
                  else {"min_decoding_length": 0, "max_decoding_length": max(1, max_new - self.forced_eos)})
        sources = [self.vocab.pieces(ids[:-1] if self.adds_eos else ids) for ids in batch]  # ids end with </s>
        results = self.translator.translate_batch(
            sources, beam_size=beam, length_penalty=1.0, max_batch_size=0, max_input_length=self.limit + 1,
            suppress_sequences=self.suppress, return_scores=False, return_end_token=True,
            use_vmap=self.shortlist is not None, **length)
        return [self.vocab.piece_ids(result.hypotheses[0]) for result in results]


def load_translator(path: Path | str, threads: int = 1, device: str | None = None,
                    shortlist: bool = False, translators: int = 1) -> Translator:
    """The translator of the folder ``path``: :class:`CT2Translator` for an ``a2d export`` folder (``translators``
    of ``threads`` CTranslate2 threads each, on the CPU; ``shortlist``: with its vocabulary map), else
    :class:`HFTranslator` (a run folder, its ``best/`` or ``last/``, or a Marian folder; on ``device``, default the
    GPU if there is one), which has neither a shortlist nor several translators: asking for one is refused."""
    if is_exported(path):
        return CT2Translator(path, threads=threads, shortlist=shortlist, translators=translators)
    if shortlist:
        raise BadValue("shortlist", True, f"{path} is not a CTranslate2 export; the shortlist is CTranslate2's "
                       "vocabulary map (a2d export, then a2d shortlist)")
    if translators != 1:
        raise BadValue("translators", translators, f"{path} is not a CTranslate2 export; several translators are "
                       "CTranslate2's (a2d export first)")
    return HFTranslator.load(path, device=device)


__all__ = ["Translator", "BatchTranslator", "HFTranslator", "CT2Translator", "load_translator"]
