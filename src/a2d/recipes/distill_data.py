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

Empty hypotheses keep their pair (the student learns to stop) and are counted; a pair whose hypothesis
encodes longer than the data's ``max_len`` is dropped, as ``a2d prepare`` drops long training pairs.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

import a2d
from a2d.data.corpus import LINE_BREAK_TABLE, read_lines
from a2d.data.prepare import META_FILE, ParallelData, Split, encode_split, load_meta, write_split
from a2d.data.vocab import Vocabulary, check_same_vocabulary
from a2d.evaluate import translate
from a2d.models import load_model
from a2d.utils import UserError, atomic_dir, atomic_write_text, sha256_file

HYPOTHESES_FILE = "hypotheses.txt"  # inside the work folder: one line per decoded source, in order
PROGRESS_FILE = "progress.json"  # inside the work folder: how many lines of HYPOTHESES_FILE are final


def work_dir_for(out_dir: Path) -> Path:
    """The folder where an unfinished run keeps its hypotheses: ``out_dir.parent / .{name}.partial``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


def distill_data(teacher: Path, data_dir: Path, out_dir: Path, beam: int = 5, max_tokens: int = 6000,
                 chunk: int = 2000, log=print) -> dict:
    """Write ``out_dir``: the data directory ``data_dir`` with the teacher's translations as train targets.

    ``teacher`` is a run folder (or its ``best/``/``last/``); decoding uses beam search (``beam``) in batches
    of at most ``max_tokens`` source tokens, ``chunk`` sentences at a time. Rerunning the same command after
    an interruption continues from the last finished chunk. Returns the new ``meta.json``.
    """
    teacher, data_dir, out_dir = Path(teacher), Path(data_dir), Path(out_dir)
    for option, value in (("--beam", beam), ("--max-tokens", max_tokens), ("--chunk", chunk)):
        if value < 1:
            raise UserError(f"{option} {value}: must be at least 1")
    if out_dir.exists():
        raise UserError(f"{out_dir}: already exists; remove it or choose another --out")

    # ---- the data and the teacher
    meta = load_meta(data_dir)
    src_lang, tgt_lang = meta["src"], meta["tgt"]
    train = ParallelData.load(data_dir, "train")
    sources = train.src_text
    vocab = Vocabulary.load(data_dir)
    model, teacher_vocab = load_model(teacher)
    check_same_vocabulary(teacher_vocab, vocab, f"--teacher {teacher}", data_dir)
    model_dir = teacher_vocab.path.parent  # the folder load_model resolved (RUN/best, ...)
    identity = {
        "teacher_sha256": sha256_file(model_dir / "model.safetensors"),
        "sources_sha256": sha256_file(data_dir / f"train.{src_lang}"),
        "beam": int(beam),
        "total": len(sources),
    }

    # ---- decode in chunks, resuming after the last finished one
    work = work_dir_for(out_dir)
    done = _resume(work, identity, log)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    starts = range(done, len(sources), chunk)
    if starts:
        log(f"translating {len(sources) - done} of {len(sources)} train sources with {teacher} (beam {beam}) on "
            f"{device}, {len(starts)} chunk(s) of up to {chunk}; work files in {work}")
    bar = tqdm(total=math.ceil(done / chunk) + len(starts), initial=math.ceil(done / chunk), unit="chunk",
               desc="distill-data", dynamic_ncols=True)
    try:
        for start in starts:
            part = sources[start:start + chunk]
            hypotheses = translate(model, vocab, part, beam=beam, max_tokens=max_tokens)
            _append_lines(work / HYPOTHESES_FILE, [h.translate(LINE_BREAK_TABLE).strip() for h in hypotheses])
            done = start + len(part)
            atomic_write_text(work / PROGRESS_FILE, json.dumps({**identity, "done": done}, indent=2) + "\n")
            bar.update(1)
    finally:
        bar.close()
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
        "beam": int(beam),
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


def _resume(work: Path, identity: dict, log) -> int:
    """How many sources ``work`` already holds finished hypotheses for (0 for a fresh start).

    A work folder left by a run with another teacher, other sources or another beam is refused; lines
    past the recorded progress (a chunk interrupted while being written) are cut off.
    """
    progress_path, hyp_path = work / PROGRESS_FILE, work / HYPOTHESES_FILE
    if not progress_path.is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        hyp_path.write_bytes(b"")
        return 0
    try:
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        done = int(progress["done"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{progress_path}: unreadable; remove {work} to start over") from None
    changed = [k for k in identity if progress.get(k) != identity[k]]
    if changed:
        raise UserError(f"{work}: an unfinished run with another {', '.join(changed)}; rerun it with the same "
                        f"teacher, data and --beam, or remove {work} to start over")
    _truncate_lines(hyp_path, done)
    log(f"resuming: {done} of {identity['total']} sources already translated in {work}")
    return done


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


__all__ = ["distill_data", "work_dir_for"]
