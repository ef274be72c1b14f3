"""Recipe: cache the teacher's top-K tempered token log-probabilities for word-level KD
(``a2d distill-data --cache-topk K [--kd-temperature T]``).

Read top to bottom: check the options, the data and the teacher (it must share the data's vocabulary and
accept its longest example); record what the cache is made of (teacher weights and config, training
tokens, K, T); keep the shards an interrupted run finished and remove what it left half-done; then run the
teacher over the training split shard by shard, teacher-forced on the references, in eval mode and fp32
(:func:`compute_shard`), writing each shard through a temporary file and listing it in ``index.json`` once
renamed. The format: :mod:`a2d.teacher_cache`; the loss that reads it: :func:`a2d.losses.cached_word_kd`.
A cache serves runs whose ``kd_temperature`` is its ``T`` only. With ``--cache-attention`` it also keeps the
teacher's attention maps (every head of every layer and kind, float16), so that A2D trains without the teacher.

    a2d distill-data --teacher runs/teacher --data data/m30k-de-en --out cache/kd-top8 --cache-topk 8
    a2d distill --data data/m30k-de-en --teacher runs/teacher --method kd --preset tiny-student \
        --out runs/kd-cached kd_cache=cache/kd-top8
"""
from __future__ import annotations

import dataclasses
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors

import a2d
from a2d.attention import KINDS, collect_attention
from a2d.data.batching import collate, token_batches
from a2d.data.prepare import ParallelData, load_meta
from a2d.data.vocab import Vocabulary
from a2d.defaults import CACHE_MAX_TOKENS, CACHE_SHARD_SIZE, CACHE_TEMPERATURE
from a2d.errors import BadValue, OutputExists
from a2d.families import shape_of
from a2d.losses import IGNORE
from a2d.methods.kd import WordKDSettings
from a2d.models import resolve_model_dir, use_attention_maps
from a2d.recipes.distill import load_teacher
from a2d.teacher_cache import (FORMAT_VERSION, INDEX_FILE, KIND, attention_tensors, data_identity, describe, ids_dtype,
                               map_sizes, read_index, shard_name, teacher_identity, write_index)
from a2d.tokenizer import collate_ids
from a2d.training import model_inputs, to_device
from a2d.utils import UserError, atomic_write_bytes

#: the smallest --kd-temperature: kd_temperature's own lower bound (a cache below it could serve no run)
MIN_TEMPERATURE = next(f.metadata["low"] for f in dataclasses.fields(WordKDSettings) if f.name == "kd_temperature")


@torch.inference_mode()
def compute_shard(model, vocab, data, start: int, end: int, topk: int, max_tokens: int,
                  device: torch.device | str = "cpu", temperature: float = CACHE_TEMPERATURE,
                  attention: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors of the shard holding examples ``[start, end)`` of ``data`` (:mod:`a2d.teacher_cache`'s format).

    Per real target position, in fp32: ``t = log_softmax(logits / temperature)``, its top ``topk`` ids and
    values (descending), and the log-sum-exp of the other entries of ``t`` (the rest of the vocabulary's
    tempered log-mass; -inf when ``topk`` is the vocabulary size). The examples are batched by length
    (:func:`a2d.data.batching.token_batches`, no shuffling) for little padding; the rows are stored in
    example order. With ``attention`` (the index's entry: kinds, layers, heads; the model must run the eager
    attention kernel) each example's maps of those kinds too, over its real cells, in float16. The result
    depends only on the arguments.
    """
    lengths = np.asarray(data.tgt_lens[start:end], dtype=np.int64) + 1  # positions per example (with </s>)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = torch.zeros(int(offsets[-1]), topk, dtype=ids_dtype(len(vocab)))
    logp = torch.zeros(int(offsets[-1]), topk, dtype=torch.float32)
    rest = torch.zeros(int(offsets[-1]), dtype=torch.float32)
    kinds = attention["kinds"] if attention else ()
    src_lens, tgt_lens = data.src_lens[start:end], data.tgt_lens[start:end]
    maps, map_offsets = {}, {}
    for kind in kinds:
        map_offsets[kind] = np.zeros(end - start + 1, dtype=np.int64)
        np.cumsum(map_sizes(attention, kind, src_lens, tgt_lens), out=map_offsets[kind][1:])
        maps[kind] = torch.zeros(int(map_offsets[kind][-1]), dtype=torch.float16)
    special = collate_ids(vocab)
    batches = token_batches(data.src_lens[start:end], data.tgt_lens[start:end], max_tokens, shuffle=False,
                            seed=0, epoch=0)
    model.eval()
    for local in batches:
        batch = to_device(collate([data[start + j] for j in local], **special), device)
        out = model(**model_inputs(batch), output_attentions=bool(kinds))
        logits = out.logits
        for kind, per_kind in collect_attention(out, batch, "head", kinds).items() if kinds else ():
            queries, keys = {"enc_self": ("attention_mask",) * 2, "dec_self": ("decoder_attention_mask",) * 2,
                             "dec_cross": ("decoder_attention_mask", "attention_mask")}[kind]
            for row, j in enumerate(local):  # the real cells of each example, (N*M, Lq, Lk) flattened
                lq, lk = int(batch[queries][row].sum()), int(batch[keys][row].sum())
                a, b = map_offsets[kind][j], map_offsets[kind][j + 1]
                maps[kind][a:b] = per_kind.maps[row, :, :lq, :lk].reshape(-1).to(torch.float16).cpu()
        mask = batch["labels"].ne(IGNORE)
        z = logits.float()[mask]  # (N, V), rows in (example, position) order
        t = F.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)  # as a2d.losses.log_probs
        top = t.topk(topk, dim=-1)  # sorted, descending
        rows = torch.from_numpy(np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in local]))
        if len(rows) != top.indices.shape[0]:
            raise RuntimeError(f"examples {start}-{end}: {top.indices.shape[0]} label positions for {len(rows)} rows")
        ids[rows] = top.indices.cpu().to(ids.dtype)
        logp[rows] = top.values.cpu()
        rest[rows] = t.scatter(-1, top.indices, -math.inf).logsumexp(-1).cpu()  # -inf for an empty rest
    tensors = {"ids": ids, "logp": logp, "rest": rest, "offsets": torch.from_numpy(offsets)}
    for kind in kinds:
        name, where = attention_tensors(kind)
        tensors[name], tensors[where] = maps[kind], torch.from_numpy(map_offsets[kind])
    return tensors


def build_cache(teacher: Path, data_dir: Path, out: Path, topk: int, max_tokens: int = CACHE_MAX_TOKENS,
                shard_size: int = CACHE_SHARD_SIZE, temperature: float = CACHE_TEMPERATURE, attention: bool = False,
                log=print) -> dict:
    """Write (or finish) the cache ``out``: ``teacher``'s top-``topk`` log-probabilities at ``temperature`` over
    ``data_dir``'s train split.

    ``teacher`` is a run folder (or its ``best/``/``last/``, or a Hugging Face Marian folder) sharing the
    data's vocabulary; teacher batches hold at most ``max_tokens`` padded tokens; a shard holds
    ``shard_size`` examples; ``temperature`` must be the ``kd_temperature`` of the runs that will read it;
    ``attention``: keep the teacher's attention maps too (every kind it has, every head; A2D reads them).
    Rerunning the same command after an interruption keeps the finished shards and computes the rest; on a
    finished cache it only reports it. Returns the index.
    """
    teacher, data_dir, out = Path(teacher), Path(data_dir), Path(out)
    for option, value in (("topk", topk), ("max_tokens", max_tokens), ("shard_size", shard_size)):
        if value < 1:
            raise BadValue(option, value, "must be at least 1")
    if not MIN_TEMPERATURE <= temperature < math.inf:  # nan fails too
        raise BadValue("temperature", temperature, f"must be at least {MIN_TEMPERATURE:g} and finite (the "
                       "kd_temperature of the runs that read the cache)")
    temperature = float(temperature)
    if out.exists() and not out.is_dir():
        raise OutputExists(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX_FILE).is_file():
        raise OutputExists(out, f"a folder that holds no teacher cache ({INDEX_FILE})")
    load_meta(data_dir)  # a one-line error if data_dir is not a prepared directory
    vocab = Vocabulary.load(data_dir)
    train = ParallelData.load(data_dir, "train")
    if topk > len(vocab):
        raise BadValue("topk", topk, f"larger than the vocabulary of {data_dir} ({len(vocab)} pieces)")
    model = load_teacher(teacher, vocab, data_dir)
    n_positions = int(model.config.max_position_embeddings)
    longest = int(max(train.src_lens.max(), train.tgt_lens.max())) + 1 if len(train) else 0
    if longest > n_positions:
        raise BadValue("teacher", teacher, f"accepts {n_positions} positions, the longest train example of "
                       f"{data_dir} has {longest} (with </s>); prepare the data with {{max_len}}",
                       max_len=n_positions - 1)
    if longest > max_tokens:
        raise BadValue("max_tokens", max_tokens, f"smaller than the longest train example of {data_dir} ({longest} "
                       "tokens); raise it")
    maps = None
    if attention:
        shape = shape_of(model.config)
        maps = {"kinds": [k for k in KINDS if k in shape.kinds], "dtype": "float16", "granularity": "head",
                "layers": {k: shape.layers_heads(k)[0] for k in KINDS if k in shape.kinds},
                "heads": {k: shape.layers_heads(k)[1] for k in KINDS if k in shape.kinds}}
        use_attention_maps(model)  # per-head probabilities come from the eager attention kernel
    identity = {
        "kind": KIND, "format": FORMAT_VERSION, "attention": maps,
        "teacher": teacher_identity(resolve_model_dir(teacher)),
        "data": data_identity(data_dir, train, vocab),
        "topk": int(topk), "temperature": temperature, "vocab_size": len(vocab), "shard_size": int(shard_size),
        "log_probabilities": "logp: log_softmax(teacher logits / temperature) of the top-K ids; rest: the log-sum-exp "
                             "of the other ids' (the rest of the vocabulary); only runs with kd_temperature = "
                             "temperature read it",
        "teacher_precision": "fp32", "teacher_mode": "eval (no dropout), teacher-forced on the reference targets",
        "dtypes": {"ids": str(ids_dtype(len(vocab))).removeprefix("torch."), "logp": "float32", "rest": "float32",
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
        log(f"caching the top {topk} of {len(vocab)} teacher log-probabilities at temperature {temperature:g} for "
            f"{len(train):,} train examples of "
            f"{data_dir} with {teacher} on {device}: {len(todo)} of {len(starts)} shard(s) of up to "
            f"{shard_size} examples to go")
    for i in todo:
        start, end = starts[i], min(starts[i] + shard_size, len(train))
        began = time.perf_counter()
        tensors = compute_shard(model, vocab, train, start, end, topk, max_tokens, device, temperature, maps)
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
        raise BadValue("out", out, f"a cache of another {', '.join(_what(k) for k in changed)}; rerun with the same "
                       "{teacher}, {data_dir}, {topk} and {temperature}"
                       + (" and {attention} as it was built" if "attention" in changed else "")
                       + ", or choose another {out}")
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
    """How a :class:`~a2d.errors.BadValue`'s problem names the identity ``key``: a parameter as ``{name}``."""
    return {"teacher": "teacher (weights or config.json)", "data": "data", "topk": "{topk}",
            "temperature": "{temperature}", "shard_size": "{shard_size}",
            "attention": "content (with or without the attention maps)"}.get(key, key)


__all__ = ["build_cache", "compute_shard"]
