"""Teacher-output caching for word-level KD: the teacher's top-K token probabilities, computed once.

Word-level KD (:mod:`a2d.methods.kd`) needs, at every real target position of every training batch, the
teacher's distribution over the vocabulary given the source and the reference prefix. The teacher is
frozen and teacher-forced on the same references every epoch, so these distributions never change:
:func:`build_cache` (``a2d distill-data --cache-topk K``) runs the teacher once over a data directory's
training split and keeps, per real target position, the ``K`` most probable token ids and their
probabilities; ``a2d distill ... kd_cache=CACHE`` then trains without the teacher's logits
(:class:`TeacherCache`, :func:`cached_word_kd`).

A cache is a folder::

    index.json                    what it holds (below); written last after every shard, atomically
    shard-00000.safetensors       examples [start, end) of the training split, in index order:
                                    ids     (P, K) int16 (int32 for vocabularies over 32767 pieces)
                                    probs   (P, K) float16, descending along K
                                    offsets (n + 1,) int64: example start + j holds rows offsets[j]:offsets[j+1]
    ...

P counts the shard's real target positions: ``len(target) + 1`` per example (the target pieces and
``</s>``), exactly the positions whose ``labels`` are not padding in :func:`a2d.data.batching.collate`.
The teacher sees exactly the inputs a training batch gives it (the same collate, the same special ids),
in eval mode (no dropout), in fp32. The probabilities are the plain softmax of its logits (temperature
1, "temperature-free"): a run's ``kd_temperature`` is applied at training time.

``index.json`` records the teacher (the SHA-256 of its ``model.safetensors``), the data (the SHA-256 of
its ``train.safetensors`` and of its tokenizer, the number of examples and positions), K, the dtypes,
the shard list (file, example range, positions, bytes) and the totals. A shard is written to a
temporary file and renamed, then listed in the index, so a build that is killed keeps every finished
shard and never shows a half-written one; the same command resumes it. Training refuses a cache that
is unfinished or was made from another teacher or other data.

The cached KD term (:func:`cached_word_kd`), per real target token, at temperature ``T``:

    q_k = p_k^(1/T) / sum_{j in top-K} p_j^(1/T)           (the cached top-K, renormalised)
    L_KD = T^2 * sum_{k in top-K} q_k (log q_k - log s_k)   (s: the student's softmax(z/T) over the vocabulary)

The top-K mass IS renormalised: ``q`` is the teacher's distribution restricted to its top K, the tail
set to zero (``p_k^(1/T)`` is proportional to ``exp(z_k / T)``, so within the top K this is the
teacher's tempered distribution exactly). With K equal to the vocabulary size the mass is 1 and the
term equals the live :func:`a2d.losses.word_kd` (up to the fp16 rounding of the stored probabilities).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from a2d.losses import IGNORE, log_probs, word_kd
from a2d.utils import UserError, atomic_write_text, sha256_file

INDEX_FILE = "index.json"
KIND = "a2d-teacher-topk"
FORMAT_VERSION = 1
#: keys :meth:`TeacherCache.lookup` adds to a training batch (B, T, K): token ids (int64) and probabilities (fp16)
IDS_KEY, PROBS_KEY = "kd_topk_ids", "kd_topk_probs"
DEFAULT_SHARD_SIZE = 5000  # examples per shard
DEFAULT_MAX_TOKENS = 4096  # padded tokens per teacher batch


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def ids_dtype(vocab_size: int) -> torch.dtype:
    """int16 while every id fits (vocabularies up to 32767 pieces), else int32."""
    return torch.int16 if vocab_size <= torch.iinfo(torch.int16).max else torch.int32


# --------------------------------------------------------------------------------------------- the loss
def cached_word_kd(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_probs: torch.Tensor,
                   labels: torch.Tensor, temperature: float = 1.0,
                   token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Word-level KD against cached top-K teacher probabilities (see the module docstring for the formula).

    student_logits (B, T, V); topk_ids (B, T, K) integer ids; topk_probs (B, T, K) the teacher's
    temperature-1 probabilities (any float dtype; padded positions any value); labels (B, T) mark the
    real tokens; ``token_mask`` (B, T) bool narrows the tokens that take part (selective KD). Mean over
    the tokens that take part, times ``T^2``, fp32, as :func:`a2d.losses.word_kd`; the student's
    log-probabilities are :func:`a2d.losses.log_probs`' (shared with the cross-entropy).
    """
    mask = labels.ne(IGNORE)
    if token_mask is not None:
        mask = mask & token_mask
    s = log_probs(student_logits, temperature)  # (B, T, V)
    with torch.no_grad():  # the teacher's side is a constant
        p = topk_probs.float().clamp(min=0.0)  # (B, T, K)
        if temperature != 1.0:
            p = p.pow(1.0 / temperature)
        q = p / p.sum(-1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)  # renormalised over the top K
        neg_entropy = torch.xlogy(q, q).sum(-1)  # (B, T); 0 * log 0 = 0 where fp16 rounded a probability to 0
        ids = topk_ids.long()
    kl = neg_entropy - (q * s.gather(-1, ids)).sum(-1)
    return torch.where(mask, kl, 0.0).sum() / mask.sum().clamp(min=1) * temperature ** 2


def kd_loss(student_logits: torch.Tensor, teacher, batch: dict, temperature: float = 1.0,
            token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The word-KD term of a batch: from the cache when :meth:`TeacherCache.lookup` filled ``batch``, else
    from the teacher's live logits (:func:`a2d.losses.word_kd`)."""
    if IDS_KEY in batch:
        return cached_word_kd(student_logits, batch[IDS_KEY], batch[PROBS_KEY], batch["labels"], temperature,
                              token_mask)
    if teacher is None or getattr(teacher, "logits", None) is None:
        raise ValueError("word-level KD needs the teacher's logits or a kd_cache")
    return word_kd(student_logits, teacher.logits.detach(), batch["labels"], temperature, token_mask)


# --------------------------------------------------------------------------------------------- identity
def teacher_identity(model_dir: Path) -> dict:
    """What a cache records of its teacher: the resolved folder and the SHA-256 of its weights."""
    return {"path": str(Path(model_dir).resolve()), "sha256": sha256_file(Path(model_dir) / "model.safetensors")}


def data_identity(data_dir: Path, data, vocab) -> dict:
    """What a cache records of its data: the train split's token file, tokenizer, examples and positions."""
    return {"path": str(Path(data_dir).resolve()), "split": "train",
            "train_sha256": sha256_file(Path(data_dir) / "train.safetensors"),
            "tokenizer_sha256": vocab.checksum(), "examples": len(data),
            "positions": int((np.asarray(data.tgt_lens, dtype=np.int64) + 1).sum())}


# --------------------------------------------------------------------------------------------- building
@torch.inference_mode()
def compute_shard(model, vocab, data, start: int, end: int, topk: int, max_tokens: int,
                  device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of the shard holding examples ``[start, end)`` of ``data`` (see the module docstring).

    The examples are batched by length (:func:`a2d.data.batching.token_batches`, no shuffling) for
    little padding; the rows are stored in example order. The result depends only on the arguments.
    """
    from a2d.data.batching import collate, token_batches
    from a2d.tokenizer import collate_ids
    from a2d.training import model_inputs, to_device

    lengths = np.asarray(data.tgt_lens[start:end], dtype=np.int64) + 1  # positions per example (with </s>)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = torch.zeros(int(offsets[-1]), topk, dtype=ids_dtype(len(vocab)))
    probs = torch.zeros(int(offsets[-1]), topk, dtype=torch.float16)
    special = collate_ids(vocab)
    batches = token_batches(data.src_lens[start:end], data.tgt_lens[start:end], max_tokens, shuffle=False,
                            seed=0, epoch=0)
    model.eval()
    for local in batches:
        batch = to_device(collate([data[start + j] for j in local], **special), device)
        logits = model(**model_inputs(batch)).logits
        mask = batch["labels"].ne(IGNORE)
        lprobs = F.log_softmax(logits.float()[mask], dim=-1)  # (N, V), rows in (example, position) order
        top = lprobs.topk(topk, dim=-1)  # sorted, descending
        rows = torch.from_numpy(np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in local]))
        if len(rows) != top.indices.shape[0]:
            raise RuntimeError(f"examples {start}-{end}: {top.indices.shape[0]} label positions for {len(rows)} rows")
        ids[rows] = top.indices.cpu().to(ids.dtype)
        probs[rows] = top.values.exp().cpu().to(torch.float16)
    return {"ids": ids, "probs": probs, "offsets": torch.from_numpy(offsets)}


def describe(index: dict) -> str:
    """One line: K, positions, examples, shards, size (and build time when recorded)."""
    total = sum(s["bytes"] for s in index["shards"])
    positions = sum(s["positions"] for s in index["shards"])
    seconds = sum(s.get("seconds", 0.0) for s in index["shards"])  # teacher passes and writes, over all runs
    return (f"top {index['topk']} of {index['vocab_size']} for {positions:,} target positions of "
            f"{index['data']['examples']:,} examples in {len(index['shards'])} shard(s), {total / 1e6:.1f} MB "
            f"({total / max(positions, 1):.0f} bytes per position), build time {seconds:.1f} s")


def write_index(out: Path, index: dict) -> None:
    """``out/index.json`` with its totals updated, written atomically."""
    index["positions"] = sum(s["positions"] for s in index["shards"])
    index["bytes"] = sum(s["bytes"] for s in index["shards"])
    atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=2) + "\n")


def read_index(path: Path | str) -> dict:
    """A cache's ``index.json``, checked to be one; a one-line error otherwise."""
    path = Path(path)
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a teacher cache (no {INDEX_FILE}); make one with "
                        "a2d distill-data --cache-topk K") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); remove {path.parent} and build the cache again") from None
    if not isinstance(index, dict) or index.get("kind") != KIND or not isinstance(index.get("shards"), list):
        raise UserError(f"{path}: not the index of an a2d teacher cache")
    if index.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: cache format {index.get('format')}, this a2d reads {FORMAT_VERSION}; "
                        "build the cache again")
    return index


# --------------------------------------------------------------------------------------------- training
class TeacherCache:
    """A finished cache, opened for training: :meth:`check` it, then :meth:`lookup` batches by example index.

    Shards are read through safetensors' memory map; only the rows of a batch's examples are copied.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"kd_cache={path}: no such folder (make it with a2d distill-data --cache-topk K)")
        self.index = read_index(self.path / INDEX_FILE)
        if not self.index.get("complete"):
            raise UserError(f"kd_cache={path}: unfinished ({len(self.index['shards'])} shard(s) written); rerun "
                            "the a2d distill-data command that made it to finish it")
        self.topk = int(self.index["topk"])
        self.vocab_size = int(self.index["vocab_size"])
        self.starts = np.array([s["start"] for s in self.index["shards"]], dtype=np.int64)
        self._files, self._offsets = [], []
        for shard in self.index["shards"]:
            file = self.path / shard["file"]
            try:
                handle = safe_open(str(file), framework="pt")
                offsets = handle.get_tensor("offsets").numpy()
                shapes = {k: handle.get_slice(k).get_shape() for k in ("ids", "probs")}
            except (SafetensorError, OSError, KeyError) as e:
                raise UserError(f"{file}: damaged or missing ({str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                                f"remove {self.path} and build the cache again") from None
            if (len(offsets) != shard["end"] - shard["start"] + 1
                    or any(tuple(v) != (shard["positions"], self.topk) for v in shapes.values())):
                raise UserError(f"{file}: does not match {INDEX_FILE}; remove {self.path} and build the cache again")
            self._files.append(handle)
            self._offsets.append(offsets)

    def __len__(self) -> int:
        return int(self.index["data"]["examples"])

    def check(self, data_dir: Path | str, data, vocab, teacher_dir: Path | str) -> None:
        """Refuse (one line) a cache made from another teacher or other data than this run's."""
        from a2d.models import resolve_model_dir

        where = f"kd_cache={self.path}"
        made = self.index["data"]
        if made["tokenizer_sha256"] != vocab.checksum() or self.vocab_size != len(vocab):
            raise UserError(f"{where}: made with another tokenizer than {data_dir}")
        if made["examples"] != len(data) or made["train_sha256"] != sha256_file(Path(data_dir) / "train.safetensors"):
            raise UserError(f"{where}: made from other training data ({made['path']}, {made['examples']:,} "
                            f"examples) than {data_dir} ({len(data):,}); build a cache of this data")
        lengths = np.concatenate([np.diff(o) for o in self._offsets]) if self._offsets else np.zeros(0, np.int64)
        if not np.array_equal(lengths, np.asarray(data.tgt_lens, dtype=np.int64) + 1):
            raise UserError(f"{where}: its positions do not match the targets of {data_dir}; build the cache again")
        sha = sha256_file(resolve_model_dir(teacher_dir) / "model.safetensors")
        if sha != self.index["teacher"]["sha256"]:
            raise UserError(f"{where}: made with another teacher ({self.index['teacher']['path']}) than --teacher "
                            f"{teacher_dir}; build a cache with this teacher or give that one")

    def lookup(self, indices, width: int) -> dict[str, torch.Tensor]:
        """``{IDS_KEY: (B, width, K) int64, PROBS_KEY: (B, width, K) fp16}`` for the examples ``indices`` (the
        batch's, in its order); rows past an example's positions are 0. ``width`` is the batch's ``labels.shape[1]``."""
        ids = torch.zeros(len(indices), width, self.topk, dtype=torch.long)
        probs = torch.zeros(len(indices), width, self.topk, dtype=torch.float16)
        for row, i in enumerate(indices):
            s = int(np.searchsorted(self.starts, i, side="right")) - 1
            local = int(i) - int(self.starts[s])
            a, b = int(self._offsets[s][local]), int(self._offsets[s][local + 1])
            if b - a > width:
                raise ValueError(f"example {i} has {b - a} cached positions, the batch only {width}")
            handle = self._files[s]
            ids[row, :b - a] = handle.get_slice("ids")[a:b]
            probs[row, :b - a] = handle.get_slice("probs")[a:b]
        return {IDS_KEY: ids, PROBS_KEY: probs}


def open_kd_cache(cfg, method, data_dir: Path, data, vocab, teacher_path: Path | None) -> TeacherCache | None:
    """The run's cache (``kd_cache=CACHE``), opened and checked against its data and teacher; None without one.

    Only methods whose KD term reads the cache (``reads_kd_cache``) accept it.
    """
    path = getattr(cfg.settings, "kd_cache", "") if cfg.method is not None else ""
    if not path:
        return None
    if not getattr(method, "reads_kd_cache", False):
        raise UserError(f"kd_cache={path}: method {cfg.method} does not read a teacher cache (kd, selective-kd, a2d "
                        "and a2d-layerwise do)")
    if teacher_path is None:
        raise UserError(f"kd_cache={path}: give --teacher too (the cache is checked against it)")
    cache = TeacherCache(path)
    cache.check(data_dir, data, vocab, teacher_path)
    return cache


__all__ = ["compute_shard", "write_index", "read_index", "shard_name", "ids_dtype", "teacher_identity",
           "data_identity", "TeacherCache", "open_kd_cache", "cached_word_kd", "kd_loss",
           "describe", "IDS_KEY", "PROBS_KEY", "INDEX_FILE"]
