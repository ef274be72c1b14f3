"""Recipe: cache the teacher's top-K token probabilities for word-level KD (``a2d distill-data --cache-topk K``).

Read top to bottom: check the options, the data and the teacher (it must share the data's vocabulary and
accept its longest example); record what the cache is made of (teacher weights, training tokens, K);
keep the shards an interrupted run finished and remove what it left half-done; then run the teacher
over the training split shard by shard, teacher-forced on the references, in eval mode and fp32
(:func:`a2d.teacher_cache.compute_shard`), writing each shard through a temporary file and listing it
in ``index.json`` once renamed. The format and the loss that reads it: :mod:`a2d.teacher_cache`.

    a2d distill-data --teacher runs/teacher --data data/m30k-de-en --out cache/kd-top8 --cache-topk 8
    a2d distill --data data/m30k-de-en --teacher runs/teacher --method kd --preset tiny-student \
        --out runs/kd-cached kd_cache=cache/kd-top8
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

import a2d
from a2d.data.prepare import ParallelData, load_meta
from a2d.data.vocab import Vocabulary
from a2d.models import resolve_model_dir
from a2d.recipes.distill import load_teacher
from a2d.teacher_cache import (DEFAULT_MAX_TOKENS, DEFAULT_SHARD_SIZE, FORMAT_VERSION, INDEX_FILE, KIND,
                               compute_shard, data_identity, describe, ids_dtype, read_index, shard_name,
                               teacher_identity, write_index)
from a2d.utils import UserError, atomic_write_bytes


def build_cache(teacher: Path, data_dir: Path, out: Path, topk: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                shard_size: int = DEFAULT_SHARD_SIZE, log=print) -> dict:
    """Write (or finish) the cache ``out``: ``teacher``'s top-``topk`` probabilities over ``data_dir``'s train split.

    ``teacher`` is a run folder (or its ``best/``/``last/``, or a Hugging Face Marian folder) sharing the
    data's vocabulary; teacher batches hold at most ``max_tokens`` padded tokens; a shard holds
    ``shard_size`` examples. Rerunning the same command after an interruption keeps the finished
    shards and computes the rest; on a finished cache it only reports it. Returns the index.
    """
    teacher, data_dir, out = Path(teacher), Path(data_dir), Path(out)
    for option, value in (("--cache-topk", topk), ("--max-tokens", max_tokens), ("--shard-size", shard_size)):
        if value < 1:
            raise UserError(f"{option} {value}: must be at least 1")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX_FILE).is_file():
        raise UserError(f"--out {out}: a folder that holds no teacher cache ({INDEX_FILE}); choose another --out")
    load_meta(data_dir)  # a one-line error if --data is not a prepared directory
    vocab = Vocabulary.load(data_dir)
    train = ParallelData.load(data_dir, "train")
    if topk > len(vocab):
        raise UserError(f"--cache-topk {topk}: larger than the vocabulary of {data_dir} ({len(vocab)} pieces)")
    model = load_teacher(teacher, vocab, data_dir)
    n_positions = int(model.config.max_position_embeddings)
    longest = int(max(train.src_lens.max(), train.tgt_lens.max())) + 1 if len(train) else 0
    if longest > n_positions:
        raise UserError(f"--teacher {teacher}: accepts {n_positions} positions, the longest train example of "
                        f"{data_dir} has {longest} (with </s>); prepare the data with --max-len {n_positions - 1}")
    if longest > max_tokens:
        raise UserError(f"--max-tokens {max_tokens}: smaller than the longest train example of {data_dir} "
                        f"({longest} tokens); raise --max-tokens")
    identity = {
        "kind": KIND, "format": FORMAT_VERSION,
        "teacher": teacher_identity(resolve_model_dir(teacher)),
        "data": data_identity(data_dir, train, vocab),
        "topk": int(topk), "vocab_size": len(vocab), "shard_size": int(shard_size),
        "probabilities": "softmax of the teacher's logits at temperature 1 (kd_temperature is applied in training)",
        "teacher_precision": "fp32", "teacher_mode": "eval (no dropout), teacher-forced on the reference targets",
        "dtypes": {"ids": str(ids_dtype(len(vocab))).removeprefix("torch."), "probs": "float16",
                   "offsets": "int64"},
    }
    index = _resume_index(out, identity, log)
    starts = list(range(0, len(train), shard_size))
    done = {s["start"] for s in index["shards"]}
    todo = [i for i, start in enumerate(starts) if start not in done]
    if not todo and index.get("complete"):
        log(f"{out}: already complete; {describe(index)}")
        return index
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if todo:
        log(f"caching the top {topk} of {len(vocab)} teacher probabilities for {len(train):,} train examples of "
            f"{data_dir} with {teacher} on {device}: {len(todo)} of {len(starts)} shard(s) of up to "
            f"{shard_size} examples to go")
    for i in todo:
        start, end = starts[i], min(starts[i] + shard_size, len(train))
        began = time.perf_counter()
        tensors = compute_shard(model, vocab, train, start, end, topk, max_tokens, device)
        data = save_safetensors(tensors, metadata={"format": KIND})
        atomic_write_bytes(out / shard_name(i), data)  # a temporary file, renamed: never half-written
        seconds = time.perf_counter() - began
        index["shards"].append({"file": shard_name(i), "start": start, "end": end,
                                "positions": int(tensors["ids"].shape[0]), "bytes": len(data),
                                "seconds": round(seconds, 3)})
        index["shards"].sort(key=lambda s: s["start"])
        write_index(out, index)  # lists the shard only once its file is complete
        log(f"  shard {i + 1}/{len(starts)}: examples {start}-{end - 1}, {tensors['ids'].shape[0]:,} positions, "
            f"{len(data) / 1e6:.1f} MB, {seconds:.1f} s")
    index["complete"] = True
    index["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_index(out, index)
    log(f"wrote {out}: {describe(index)}")
    return index


def _resume_index(out: Path, identity: dict, log) -> dict:
    """The index to continue: a fresh one, or the unfinished (or finished) one of the same build.

    Files an interrupted run left behind (a temporary file, a shard written but not yet listed) are
    removed; a listed shard that is missing or of another size is an error.
    """
    path = out / INDEX_FILE
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        for stale in _unlisted(out, []):
            stale.unlink()
        index = {**identity, "a2d_version": a2d.__version__,
                 "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "complete": False,
                 "shards": []}
        write_index(out, index)
        return index
    index = read_index(path)
    changed = [k for k in identity if _key(index.get(k)) != _key(identity[k])]
    if changed:
        raise UserError(f"--out {out}: a cache of another {', '.join(_what(k) for k in changed)}; rerun with the "
                        f"same --teacher, --data and --cache-topk, or choose another --out")
    for shard in index["shards"]:
        file = out / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            raise UserError(f"{file}: listed in {path} but missing or of another size; remove {out} to start over")
    stale = _unlisted(out, index["shards"])
    for file in stale:
        file.unlink()
    if index["shards"] and not index.get("complete"):
        log(f"resuming {out}: {len(index['shards'])} shard(s) finished"
            + (f", {len(stale)} unfinished file(s) removed" if stale else ""))
    return index


def _unlisted(out: Path, shards: list[dict]) -> list[Path]:
    """Files of ``out`` an interrupted build left: temporary files and shards the index does not list."""
    listed = {s["file"] for s in shards}
    return sorted(p for p in out.iterdir() if p.is_file() and (
        (p.name.startswith(".") and p.name.endswith(".tmp"))
        or (p.name.startswith("shard-") and p.name.endswith(".safetensors") and p.name not in listed)))


def _key(value):
    """What must agree between a run and the cache it continues: everything but where the files lie (``path``)."""
    return {k: v for k, v in value.items() if k != "path"} if isinstance(value, dict) else value


def _what(key: str) -> str:
    return {"teacher": "teacher", "data": "data", "topk": "--cache-topk", "shard_size": "--shard-size"}.get(key, key)


__all__ = ["build_cache"]
