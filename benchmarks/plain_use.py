"""An a2d model used without a2d: plain ``transformers`` on a Hugging Face folder (a run's ``best/``), plain
``ctranslate2`` + ``sentencepiece`` on an ``a2d export`` folder, and (``--check``) the same lines through a2d's
own translator, line for line.

    python benchmarks/plain_use.py --hf runs/x/best --ct2 export/x --lines test.de [--n 100] [--out plain.json]
    python benchmarks/plain_use.py --hf runs/x/best --ct2 export/x --lines test.de --check
    python benchmarks/plain_use.py --hf runs/x/best --ct2 export/x --readme

Each folder is translated greedy and with the beam it records, exactly as a plain user does it: Hugging Face
``generate()`` with no decoding arguments (``num_beams=1`` for greedy), CTranslate2 ``translate_batch`` with the
folder's SentencePiece models and only the arguments its README names (the beam, and the positions from
``a2d_export.json``). ``--readme`` runs the Python block of each folder's ``README.md`` as it is written and
prints what it prints. Without ``--check`` nothing of a2d is imported, so the script runs where a2d is not
installed (tests/test_export_plain.py runs it so, and compares with a2d's translator). ``--check`` imports a2d,
translates the same lines with ``a2d.translator.load_translator`` (``--beam 1`` and the folder's default beam)
and exits 1 when any line differs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path


def hugging_face(folder: str, lines: list[str], greedy: bool) -> list[str]:
    """``lines`` translated by the Hugging Face folder with ``transformers`` alone."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    batch = tokenizer(lines, return_tensors="pt", padding=True, truncation=True)
    with torch.inference_mode():
        out = model.generate(**batch, num_beams=1) if greedy else model.generate(**batch)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def ctranslate2_folder(folder: str, lines: list[str], greedy: bool) -> list[str]:
    """``lines`` translated by the CTranslate2 folder with ``ctranslate2`` and ``sentencepiece`` alone, with the
    arguments its README names (beam, positions)."""
    import ctranslate2
    import sentencepiece as spm

    settings = json.loads((Path(folder) / "a2d_export.json").read_text(encoding="utf-8"))
    positions = settings["max_position_embeddings"]
    translator = ctranslate2.Translator(folder)
    source = spm.SentencePieceProcessor(model_file=str(Path(folder) / "source.spm"))
    target = spm.SentencePieceProcessor(model_file=str(Path(folder) / "target.spm"))
    unk = target.id_to_piece(target.unk_id())
    steps = {"max_decoding_length": positions - 1} if positions - 1 < 256 else {}
    out = translator.translate_batch([source.encode(line, out_type=str) for line in lines],
                                     beam_size=1 if greedy else settings["beam"], max_input_length=positions, **steps)
    return [target.decode([piece for piece in result.hypotheses[0] if piece != unk]) for result in out]


def readme_output(folder: str) -> str:
    """What the Python block of ``folder/README.md`` prints, run as written."""
    text = (Path(folder) / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S)
    if code is None:
        raise SystemExit(f"{folder}/README.md: no ```python block")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.group(1), f"{folder}/README.md", "exec"), {"__name__": "readme"})
    return printed.getvalue()


def plain(hf: str | None, ct2: str | None, lines: list[str]) -> dict:
    engines = {"hf": (hf, hugging_face), "ct2": (ct2, ctranslate2_folder)}
    return {name: {"greedy": run(folder, lines, greedy=True), "beam": run(folder, lines, greedy=False)}
            for name, (folder, run) in engines.items() if folder}


def check(result: dict, hf: str | None, ct2: str | None, lines: list[str]) -> int:
    """Compare with a2d's translator (the one import of a2d, kept out of the plain part); 1 when a line differs."""
    from a2d.translator import load_translator

    failed = 0
    for name, folder in (("hf", hf), ("ct2", ct2)):
        if not folder:
            continue
        translator = load_translator(folder)
        for kind, beam in (("greedy", 1), ("beam", translator.default_beam)):
            ours = translator.translate(lines, beam=beam)
            same = sum(a == b for a, b in zip(ours, result[name][kind]))
            print(f"{name} {kind} (beam {beam}): {same}/{len(lines)} lines as a2d's")
            failed |= same != len(lines)
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", help="a Hugging Face model folder written by a2d (a run's best/ or last/)")
    parser.add_argument("--ct2", help="a CTranslate2 folder written by a2d export")
    parser.add_argument("--lines", help="source text, one sentence per line")
    parser.add_argument("--n", type=int, default=100, help="the first N lines (default 100)")
    parser.add_argument("--out", help="write the translations here as JSON")
    parser.add_argument("--check", action="store_true", help="compare with a2d's translator (imports a2d)")
    parser.add_argument("--readme", action="store_true", help="run each folder's README.md instead")
    args = parser.parse_args(argv)
    if not (args.hf or args.ct2):
        parser.error("give --hf, --ct2 or both")
    if args.readme:
        result = {name: readme_output(folder) for name, folder in (("hf", args.hf), ("ct2", args.ct2)) if folder}
    else:
        if not args.lines:
            parser.error("--lines is required (except with --readme)")
        lines = Path(args.lines).read_text(encoding="utf-8").splitlines()[:args.n]
        result = plain(args.hf, args.ct2, lines)
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return check(result, args.hf, args.ct2, lines) if args.check and not args.readme else 0


if __name__ == "__main__":
    sys.exit(main())
