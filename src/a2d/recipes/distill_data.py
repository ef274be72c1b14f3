"""Recipe: sequence-level KD data, the teacher's translations of a data directory's training sources.

Kim & Rush 2016 train the student on the teacher's beam outputs (``--method seq-kd``). Read top to
bottom: check the inputs and load the teacher (it must share the data's vocabulary); decode the train
sources in chunks, appending each finished chunk's hypotheses to a work file beside the output (so an
interrupted run resumes from the last finished chunk); then write a new data directory in one piece:

    tokenizer, valid.*, test.*              copied unchanged (validation and test keep the human references)
    train.{src}                             the same sources
    train.{tgt}                             the teacher's translations, one per line
    train.safetensors                       both sides encoded again, as ``a2d prepare`` does
    meta.json                               the data's, with the train counts updated and ``distilled_from``
                                            (the teacher, its engine, beam, decoding time and decoder steps)

The engine (``--engine``) is Hugging Face ``generate`` (``hf``) or CTranslate2 (``ct2-float32``, ``ct2-int8``),
the decoding most practitioners' pipelines use for this step: a model folder is exported into a temporary
folder first (:func:`a2d.export.export`), an ``a2d export`` folder is used as it is. Both decode as
:mod:`a2d.translator` describes (CTranslate2 float32 gives Hugging Face's translations), on ``threads`` cores
(default: every core): Hugging Face with that many intra-op threads, CTranslate2 as that many translators of one
thread each, decoding different batches at once (the same translations as one translator; faster than one
translator of that many threads on the CPU measured: docs/ship.md).

Empty hypotheses keep their pair (the student learns to stop) and are counted; a pair whose hypothesis
encodes longer than the data's ``max_len`` is dropped, as ``a2d prepare`` drops long training pairs.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

import a2d
from a2d.data.corpus import LINE_BREAK_TABLE, read_lines
from a2d.data.prepare import META_FILE, ParallelData, Split, encode_split, load_meta, write_split
from a2d.data.vocab import Vocabulary, check_same_vocabulary
from a2d.defaults import SEQ_KD_BEAM
from a2d.errors import BadValue, OutputExists
from a2d.export import check_quantization, export, is_exported, read_settings
from a2d.models import load_model
from a2d.translator import BatchTranslator, CT2Translator, HFTranslator
from a2d.utils import UserError, atomic_dir, atomic_write_text, sha256_file

ENGINES = ("hf", "ct2-float32", "ct2-int8")
HYPOTHESES_FILE = "hypotheses.txt"  # inside the work folder: one line per decoded source, in order
PROGRESS_FILE = "progress.json"  # inside the work folder: how many lines of HYPOTHESES_FILE are final


def work_dir_for(out_dir: Path) -> Path:
    """The folder where an unfinished run keeps its hypotheses: ``out_dir.parent / .{name}.partial``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


def distill_data(teacher: Path, data_dir: Path, out_dir: Path, beam: int = SEQ_KD_BEAM, max_tokens: int = 6000,
                 chunk: int = 2000, engine: str | None = None, threads: int | None = None, log=print) -> dict:
    """Write ``out_dir``: the data directory ``data_dir`` with the teacher's translations as train targets.

    ``teacher`` is a run folder (or its ``best/``/``last/``, or a Marian folder), or a folder written by ``a2d
    export``; ``engine`` decodes it (:data:`ENGINES`; default ``hf``, or for an export ``ct2-`` its own
    quantization), on ``threads`` cores (default every core; the module's docstring says how), with beam search (``beam``) in batches of at most
    ``max_tokens`` source tokens, ``chunk`` sentences at a time. Rerunning the same command after an interruption
    continues from the last finished chunk. Returns the new ``meta.json``.
    """
    teacher, data_dir, out_dir = Path(teacher), Path(data_dir), Path(out_dir)
    threads = (os.cpu_count() or 1) if threads is None else threads
    for option, value in (("beam", beam), ("max_tokens", max_tokens), ("chunk", chunk), ("threads", threads)):
        if value < 1:
            raise BadValue(option, value, "must be at least 1")
    exported = is_exported(teacher)
    engine = _engine(teacher, engine, exported)
    if out_dir.exists():
        raise OutputExists(out_dir)

    # ---- the data and the teacher
    meta = load_meta(data_dir)
    src_lang, tgt_lang = meta["src"], meta["tgt"]
    train = ParallelData.load(data_dir, "train")
    sources = train.src_text
    vocab = Vocabulary.load(data_dir)
    if exported:
        model, teacher_vocab, weights = None, Vocabulary.load(teacher), teacher / "model.bin"
    else:
        model, teacher_vocab = load_model(teacher)
        weights = teacher_vocab.path.parent / "model.safetensors"  # the folder load_model resolved (RUN/best, ...)
    check_same_vocabulary(teacher_vocab, vocab, "teacher", teacher, data_dir)
    identity = {
        "teacher_sha256": sha256_file(weights),
        "engine": engine,
        "sources_sha256": sha256_file(data_dir / f"train.{src_lang}"),
        "beam": int(beam),
        "total": len(sources),
    }

    # ---- decode in chunks, resuming after the last finished one
    work = work_dir_for(out_dir)
    with contextlib.ExitStack() as stack:
        translator = None
        if engine != "hf" and not exported and sources:  # exported before the work folder is made
            model = None
            translator = _exported_teacher(teacher, engine, threads, stack, log)
        done, spent = _resume(out_dir, identity, log)
        starts = range(done, len(sources), chunk)
        if starts:
            if translator is None:
                translator = (CT2Translator(teacher, translators=threads, compute_type=engine[4:]) if exported
                              else HFTranslator(model.to("cuda" if torch.cuda.is_available() else "cpu"),
                                                teacher_vocab, name=str(teacher)))
            cores = f"{threads} thread(s)" if engine == "hf" else f"{threads} translator(s) of 1 thread"
            log(f"translating {len(sources) - done} of {len(sources)} train sources with {teacher} ({engine}, beam "
                f"{beam}, {cores} on {translator.device}), {len(starts)} chunk(s) of up to {chunk}; work "
                f"files in {work}")
            stack.enter_context(_torch_threads(threads if engine == "hf" and translator.device == "cpu" else None))
        bar = tqdm(total=math.ceil(done / chunk) + len(starts), initial=math.ceil(done / chunk), unit="chunk",
                   desc="distill-data", dynamic_ncols=True)
        try:
            for start in starts:
                part = sources[start:start + chunk]
                began = time.perf_counter()
                hypotheses, steps = translate_chunk(translator, part, beam=beam, max_tokens=max_tokens)
                spent = {"seconds": spent["seconds"] + time.perf_counter() - began, "steps": spent["steps"] + steps}
                _append_lines(work / HYPOTHESES_FILE, [h.translate(LINE_BREAK_TABLE).strip() for h in hypotheses])
                done = start + len(part)
                atomic_write_text(work / PROGRESS_FILE, json.dumps({**identity, "done": done, "decode_seconds":
                                                                    round(spent["seconds"], 3),
                                                                    "decoder_steps": spent["steps"]}, indent=2) + "\n")
                bar.set_postfix_str(f"{spent['steps'] / max(spent['seconds'], 1e-9):,.0f} tok/s")
                bar.update(1)
        finally:
            bar.close()
    del model
    hypotheses = read_lines(work / HYPOTHESES_FILE) if sources else []
    if len(hypotheses) != len(sources):
        raise UserError(f"{work / HYPOTHESES_FILE}: holds {len(hypotheses)} lines for {len(sources)} sources; "
                        f"remove {work} and run again")

    # ---- the new data directory, in one piece
    part = Split("train", data_dir / f"train.{src_lang}", work / HYPOTHESES_FILE, list(sources), hypotheses,
                  lines=len(sources))
    empty = sum(1 for h in hypotheses if not h)
    encode_split(part, vocab, int(meta["max_len"]), drop_long=True)  # drops pairs whose hypothesis is too long
    if not part.src:
        raise UserError(f"every translation of {teacher} is longer than max_len {meta['max_len']} subwords")
    new_meta = copy.deepcopy(meta)
    new_meta["splits"]["train"] = {"lines": len(sources), "kept": len(part.src), "dropped_empty": 0,
                                   "dropped_long": part.dropped_long, "empty_hypotheses": empty}
    new_meta["distilled_from"] = {
        "teacher": str(teacher),
        "teacher_sha256": identity["teacher_sha256"],
        "engine": engine,
        "beam": int(beam),
        "decode_seconds": round(spent["seconds"], 3),  # the chunks' decoding, over every resumed run
        "decoder_steps": spent["steps"],  # target tokens generated, </s> included
        "threads": threads,  # of the run that finished it
        "data": str(data_dir.resolve()),
        "empty_hypotheses": empty,
        "dropped_long": part.dropped_long,
    }
    new_meta["a2d_version"] = a2d.__version__
    new_meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with atomic_dir(out_dir) as tmp:
        vocab.save(tmp)  # the data's tokenizer files, unchanged
        for split in meta["splits"]:
            if split == "train":
                continue
            for name in (f"{split}.{src_lang}", f"{split}.{tgt_lang}", f"{split}.safetensors"):
                shutil.copyfile(data_dir / name, tmp / name)
        write_split(tmp, part, src_lang, tgt_lang)
        (tmp / META_FILE).write_text(json.dumps(new_meta, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {out_dir}: {len(part.src)} train pairs with the teacher's translations ({empty} empty, "
        f"{part.dropped_long} dropped as longer than {meta['max_len']} subwords)")
    return new_meta


def translate_chunk(translator: BatchTranslator, sources: list[str], beam: int, max_tokens: int
                    ) -> tuple[list[str], int]:
    """The translations of ``sources`` and the decoder steps they took (their output ids, ``</s>`` included)."""
    ids = translator.translate_ids(sources, beam=beam, max_tokens=max_tokens)
    return [translator.detokenize(x) for x in ids], sum(len(x) for x in ids)


def _engine(teacher: Path, engine: str | None, exported: bool) -> str:
    """The engine that decodes ``teacher``: ``engine`` checked against the folder, or its default."""
    if engine is not None and engine not in ENGINES:
        raise BadValue("engine", engine, f"choose from {', '.join(ENGINES)}")
    if not exported:
        engine = engine or "hf"
        if engine != "hf":
            check_quantization(engine[4:])
        return engine
    quantization = read_settings(teacher).get("quantization")
    own = {"float32": "ct2-float32", "int8": "ct2-int8", "int8_float32": "ct2-int8"}.get(quantization)
    if engine is None:
        if own is None:
            raise BadValue("teacher", teacher, f"a CTranslate2 export in {quantization}; distill-data decodes float32 "
                           "or int8 exports (give {engine}, or export it again)", engine="ct2-int8")
        engine = own
    if engine == "hf":
        raise BadValue("engine", engine, "{teacher} is a CTranslate2 export; give {engine} ct2-int8 or ct2-float32, "
                       "or the Hugging Face model folder it was made from", teacher=teacher)
    if engine == "ct2-float32" and quantization != "float32":
        raise BadValue("engine", engine, f"{{teacher}} holds {quantization} weights; give {{engine}} ct2-int8, or "
                       "export the teacher as float32 (or give its model folder)", teacher=teacher)
    check_quantization(engine[4:])
    return engine


def _exported_teacher(teacher: Path, engine: str, threads: int, stack: contextlib.ExitStack, log) -> CT2Translator:
    """The model folder ``teacher`` exported to CTranslate2 into a temporary folder (removed when ``stack``
    closes), loaded as ``threads`` translators of one thread."""
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="a2d-distill-data-"))) / "teacher"
    log(f"exporting {teacher} to CTranslate2 {engine[4:]} in {folder} (removed afterwards)")
    export(teacher, folder, quantization=engine[4:], log=lambda *a: None)
    return CT2Translator(folder, translators=threads, compute_type=engine[4:])


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` for the block (None: left alone)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _resume(out_dir: Path, identity: dict, log) -> tuple[int, dict]:
    """How many sources the work folder of ``out_dir`` (:func:`work_dir_for`) already holds finished hypotheses for
    (0 for a fresh start), and the decoding time and decoder steps spent on them.

    A work folder left by a run with another teacher, engine, other sources or another beam is refused; lines
    past the recorded progress (a chunk interrupted while being written) are cut off.
    """
    work = work_dir_for(out_dir)
    progress_path, hyp_path = work / PROGRESS_FILE, work / HYPOTHESES_FILE
    if not progress_path.is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        hyp_path.write_bytes(b"")
        return 0, {"seconds": 0.0, "steps": 0}
    try:
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        done = int(progress["done"])
        spent = {"seconds": float(progress.get("decode_seconds", 0.0)), "steps": int(progress.get("decoder_steps", 0))}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"{progress_path}: unreadable; remove {work} to start over") from None
    progress.setdefault("engine", "hf")  # written before there was a choice
    changed = [k for k in identity if progress.get(k) != identity[k]]
    if changed:
        raise BadValue("out_dir", out_dir, f"its unfinished run in {work} has another {', '.join(changed)}; rerun "
                       f"it with the same {{teacher}}, {{data_dir}}, {{engine}} and {{beam}}, or remove {work} to start "
                       "over")
    _truncate_lines(hyp_path, done)
    log(f"resuming: {done} of {identity['total']} sources already translated in {work}")
    return done, spent


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first ``n`` complete lines of ``path`` and cut whatever follows."""
    if not path.is_file():
        raise UserError(f"{path}: missing; remove {path.parent} to start over")
    with open(path, "r+b") as f:
        for _ in range(n):
            if not f.readline().endswith(b"\n"):
                raise UserError(f"{path}: holds fewer lines than its progress file says; "
                                f"remove {path.parent} to start over")
        f.truncate()


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append one line per item and make it durable before the progress file says so."""
    with open(path, "a", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


__all__ = ["distill_data", "work_dir_for", "translate_chunk", "ENGINES"]
