"""The ``README.md`` a2d writes into every model folder it makes: how to use the folder without a2d.

A run's ``best/`` and ``last/`` are Hugging Face folders (``transformers`` alone loads them); an ``a2d export``
folder is a CTranslate2 model (``ctranslate2`` and ``sentencepiece`` alone run it). Each README holds the few
lines of Python that translate with the folder and give ``a2d translate``'s output, written from the folder
itself: its path as it was written, its file names, its beam and its positions.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import a2d

README = "README.md"
#: The source line the examples translate (any text of the model's source language works).
SAMPLE = "A sentence in the source language."
#: How far a2d lets a translation grow (a2d translate's defaults, :mod:`a2d.translator`).
LENGTH_RULE = "1.2 x the source's pieces + 10"
#: CTranslate2's default ``max_decoding_length``.
CT2_MAX_DECODING = 256


def hf_readme(path: Path | str, beam: int, positions: int) -> str:
    """The README of a Hugging Face model folder written to ``path``, decoding with ``beam``, ``positions`` long."""
    path = Path(path).as_posix()
    search = f"beam {beam} with early stopping" if beam > 1 else "greedy"
    notes = _paragraph(
        f"`generate()` without arguments decodes as `a2d translate` does (`generation_config.json`): {search}; "
        f"`generate(**batch, num_beams=1)` is `a2d translate --beam 1`. `truncation=True` cuts a source to the "
        f"model's {positions} positions (`</s>` included; `model_max_length`), as `a2d translate` does. One "
        f"difference remains: a2d stops a translation at {LENGTH_RULE} tokens, `generate()` at `max_length` "
        f"({positions}, the start token included).")
    return f"""# {Path(path).name}: a translation model (a Hugging Face Marian folder)

Written by a2d {a2d.__version__} (align-to-distill). `transformers` and `sentencepiece` alone use it:

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForSeq2SeqLM.from_pretrained("{path}")
batch = tokenizer(["{SAMPLE}"], return_tensors="pt", padding=True, truncation=True)
print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))
```

{notes}
"""


def ct2_readme(path: Path | str, beam: int, positions: int, quantization: str, unk: str,
               suppressed: list[str]) -> str:
    """The README of an ``a2d export`` folder written to ``path``: CTranslate2 with the folder's SentencePiece
    models; ``unk``: the unknown piece (a2d drops it from the output), ``suppressed``: pieces never generated."""
    path = Path(path).as_posix()
    steps = f", max_decoding_length={positions - 1}" if positions - 1 < CT2_MAX_DECODING else ""
    never = (f" and never generates {', '.join(f'`{p}`' for p in suppressed)} (a bias of its output layer)"
             if suppressed else "")
    within = " and `max_decoding_length` keeps the output within them" if steps else ""
    notes = _paragraph(
        f"This gives `a2d translate`'s output. The model appends `</s>` to the source itself (`add_source_eos` in "
        f"`config.json`){never}. Two settings have no place in a CTranslate2 model, so they are arguments: "
        f"`beam_size={beam}` is a2d's beam (CTranslate2's default is 2; `beam_size=1` is `a2d translate --beam 1`), "
        f"and `max_input_length={positions}` cuts a longer source to the model's {positions} positions, `</s>` kept, "
        f"as a2d does (without it such a source fails){within}. a2d drops `{unk}` from the output, as "
        f"`skip_special_tokens` does. One difference remains: a2d stops a translation at {LENGTH_RULE} tokens.")
    return f"""# {Path(path).name}: a CTranslate2 {quantization} translation model

Written by `a2d export` (a2d {a2d.__version__}, align-to-distill). `ctranslate2` and `sentencepiece` alone use it:

```python
import ctranslate2, sentencepiece as spm
translator = ctranslate2.Translator("{path}")
source = spm.SentencePieceProcessor(model_file="{path}/source.spm")
target = spm.SentencePieceProcessor(model_file="{path}/target.spm")
pieces = source.encode("{SAMPLE}", out_type=str)
out = translator.translate_batch([pieces], beam_size={beam}, max_input_length={positions}{steps})
print(target.decode([piece for piece in out[0].hypotheses[0] if piece != "{unk}"]))
```

{notes}
"""


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=115, break_long_words=False, break_on_hyphens=False)


def write_readme(folder: Path | str, text: str) -> None:
    (Path(folder) / README).write_text(text, encoding="utf-8")


__all__ = ["hf_readme", "ct2_readme", "write_readme", "README", "SAMPLE"]
