"""Teacher-output cache for word-level KD: the file format and its reader.

Word-level KD (:mod:`a2d.methods.kd`) needs, at every real target position of every training batch, the
teacher's tempered distribution over the vocabulary given the source and the reference prefix. The teacher
is frozen and teacher-forced on the same references every epoch, so these distributions never change:
``a2d distill-data --cache-topk K --kd-temperature T`` (:mod:`a2d.recipes.cache_teacher`) runs the teacher
once over a data directory's training split and keeps, per real target position, the ``K`` most probable
token ids, their log-probabilities and the log-mass of the rest of the vocabulary, all at temperature ``T``;
``a2d distill ... kd_cache=CACHE`` (with ``kd_temperature=T``) then trains without the teacher's logits
(:class:`TeacherCache` here, the loss :func:`a2d.losses.cached_word_kd`).

A cache is a folder::

    index.json                    what it holds (below); written last after every shard, atomically
    shard-00000.safetensors       examples [start, end) of the training split, in index order:
                                    ids     (P, K) int16 (int32 for vocabularies over 32767 pieces)
                                    logp    (P, K) float32, log_softmax(z / T) of those ids, descending along K
                                    rest    (P,)   float32, log sum_{v not in the top K} softmax(z / T)_v
                                                   (a log-sum-exp in fp32; -inf when K is the vocabulary size)
                                    offsets (n + 1,) int64: example start + j holds rows offsets[j]:offsets[j+1]
    ...

A cache built with ``--cache-attention`` (for A2D, :mod:`a2d.methods.a2d`) also holds, per shard and per attention
kind the teacher has (``enc_self``, ``dec_self``, ``dec_cross``; :mod:`a2d.attention`)::

                                  att_<kind>         (E,)    float16: each example's maps (N*M, Lq, Lk), layer-major,
                                                             over its real positions only, flattened, one after another
                                  att_<kind>_offsets (n + 1,) int64: example start + j holds elements
                                                             offsets[j]:offsets[j+1]

with ``Lq``/``Lk`` the example's source length + 1 (``enc_self`` and the keys of ``dec_cross``) or target length
+ 1 (the decoder's queries and ``dec_self``'s keys). A2D then reads the teacher's maps from the cache too, and
the teacher never runs: its maps, like its logits, depend only on the example (eval mode, teacher-forced).

P counts the shard's real target positions: ``len(target) + 1`` per example (the target pieces and
``</s>``), exactly the positions whose ``labels`` are not padding in :func:`a2d.data.batching.collate`.
The teacher sees exactly the inputs a training batch gives it (the same collate, the same special ids),
in eval mode (no dropout), in fp32; ``z`` are its logits and ``T`` the cache's ``temperature``.

``index.json`` records the format version, the attention maps it holds (``attention``: kinds, layers and heads
per kind; null without them), the temperature ``T``, the teacher (the SHA-256 of its
``model.safetensors`` and of its ``config.json``), the data (the SHA-256 of its ``train.safetensors`` and
of its tokenizer, the number of examples and positions), K, the dtypes, the shard list (file, example
range, positions, bytes) and the totals. A shard is written to a temporary file and renamed, then listed
in the index, so a build that is killed keeps every finished shard and never shows a half-written one; the
same command resumes it. Training refuses a cache that is unfinished, of another format version, built at
another temperature than the run's ``kd_temperature``, or made from another teacher (weights or config)
or other data.

Format 1 (before) stored fp16 probabilities at temperature 1 and re-tempered and renormalised the top K
at training time, which is wrong at ``kd_temperature`` > 1 and biased at any temperature; it is refused.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from a2d.attention import TEACHER_MAPS
from a2d.losses import IDS_KEY, LOGP_KEY, REST_KEY
from a2d.utils import UserError, atomic_write_text, sha256_file

INDEX_FILE = "index.json"
KIND = "a2d-teacher-topk"
FORMAT_VERSION = 2
#: the tensors of a shard file: ids (P, K), logp (P, K), rest (P,), offsets (n + 1,)
SHARD_TENSORS = ("ids", "logp", "rest", "offsets")


def attention_tensors(kind: str) -> tuple[str, str]:
    """The names of a shard's tensors holding the teacher's maps of ``kind``: the maps and their offsets."""
    return f"att_{kind}", f"att_{kind}_offsets"


def map_sizes(attention: dict, kind: str, src_lens, tgt_lens) -> np.ndarray:
    """Elements of each example's maps of ``kind`` (``N*M*Lq*Lk``), ``src_lens``/``tgt_lens`` its pieces
    (without ``</s>``), for a cache whose index records ``attention``."""
    s = np.asarray(src_lens, dtype=np.int64) + 1
    t = np.asarray(tgt_lens, dtype=np.int64) + 1
    lq, lk = {"enc_self": (s, s), "dec_self": (t, t), "dec_cross": (t, s)}[kind]
    return int(attention["layers"][kind]) * int(attention["heads"][kind]) * lq * lk


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def ids_dtype(vocab_size: int) -> torch.dtype:
    """int16 while every id fits (vocabularies up to 32767 pieces), else int32."""
    return torch.int16 if vocab_size <= torch.iinfo(torch.int16).max else torch.int32


def build_command(topk, temperature, teacher="TEACHER", data="DATA", out="CACHE") -> str:
    """The command that builds a cache of ``topk`` ids at ``temperature`` (a number, or a placeholder), for messages
    (in backticks)."""
    t = f"{temperature:g}" if isinstance(temperature, (int, float)) else temperature
    return f"`a2d distill-data --teacher {teacher} --data {data} --out {out} --cache-topk {topk} --kd-temperature {t}`"


# --------------------------------------------------------------------------------------------- identity
def teacher_identity(model_dir: Path) -> dict:
    """What a cache records of its teacher: the resolved folder, the SHA-256 of its weights and of its config."""
    model_dir = Path(model_dir)
    return {"path": str(model_dir.resolve()), "sha256": sha256_file(model_dir / "model.safetensors"),
            "config_sha256": sha256_file(model_dir / "config.json")}


def data_identity(data_dir: Path, data, vocab) -> dict:
    """What a cache records of its data: the train split's token file, tokenizer, examples and positions."""
    return {"path": str(Path(data_dir).resolve()), "split": "train",
            "train_sha256": sha256_file(Path(data_dir) / "train.safetensors"),
            "tokenizer_sha256": vocab.checksum(), "examples": len(data),
            "positions": int((np.asarray(data.tgt_lens, dtype=np.int64) + 1).sum())}


# --------------------------------------------------------------------------------------------- the index
def describe(index: dict) -> str:
    """One line: K, temperature, positions, examples, shards, size (and build time when recorded)."""
    total = sum(s["bytes"] for s in index["shards"])
    positions = sum(s["positions"] for s in index["shards"])
    seconds = sum(s.get("seconds", 0.0) for s in index["shards"])  # teacher passes and writes, over all runs
    maps = index.get("attention")
    return (f"top {index['topk']} of {index['vocab_size']} at temperature {index['temperature']:g}"
            + (f" and the attention maps ({', '.join(maps['kinds'])})" if maps else "") + " for "
            f"{positions:,} target positions of {index['data']['examples']:,} examples in {len(index['shards'])} "
            f"shard(s), {total / 1e6:.1f} MB ({total / max(positions, 1):.0f} bytes per position), "
            f"build time {seconds:.1f} s")


def write_index(out: Path, index: dict) -> None:
    """``out/index.json`` with its totals updated, written atomically."""
    index["positions"] = sum(s["positions"] for s in index["shards"])
    index["bytes"] = sum(s["bytes"] for s in index["shards"])
    atomic_write_text(out / INDEX_FILE, json.dumps(index, indent=2) + "\n")


def read_index(path: Path | str) -> dict:
    """A cache's ``index.json``, checked to be one of this format; a one-line error otherwise."""
    path = Path(path)
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a teacher cache (no {INDEX_FILE}); make one with "
                        "`a2d distill-data --cache-topk K`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); remove {path.parent} and build the cache again") from None
    if not isinstance(index, dict) or index.get("kind") != KIND or not isinstance(index.get("shards"), list):
        raise UserError(f"{path}: not the index of an a2d teacher cache")
    if index.get("format") != FORMAT_VERSION:
        topk = index.get("topk") if isinstance(index.get("topk"), int) else "K"
        raise UserError(f"{path.parent}: a teacher cache of format {index.get('format')}, this a2d reads format "
                        f"{FORMAT_VERSION} (tempered fp32 log-probabilities); remove it and rebuild it with "
                        f"{build_command(topk, 'T', out=path.parent)} (T: the run's kd_temperature)")
    temperature = index.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise UserError(f"{path}: no valid temperature ({temperature!r}); remove {path.parent} and build the "
                        "cache again")
    return index


# --------------------------------------------------------------------------------------------- training
class TeacherCache:
    """A finished cache, opened for training: :meth:`check` it, then :meth:`lookup` batches by example index.

    Shards are read through safetensors' memory map; only the rows of a batch's examples are copied.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"kd_cache={path}: no such folder (make it with `a2d distill-data --cache-topk K`)")
        self.index = read_index(self.path / INDEX_FILE)
        if not self.index.get("complete"):
            raise UserError(f"kd_cache={path}: unfinished ({len(self.index['shards'])} shard(s) written); rerun "
                            "the a2d distill-data command that made it to finish it")
        self.topk = int(self.index["topk"])
        self.temperature = float(self.index["temperature"])
        self.vocab_size = int(self.index["vocab_size"])
        self.attention: dict | None = self.index.get("attention")  # the maps it holds (None: logits only)
        self.starts = np.array([s["start"] for s in self.index["shards"]], dtype=np.int64)
        self._files, self._offsets, self._map_offsets = [], [], []
        for shard in self.index["shards"]:
            file = self.path / shard["file"]
            try:
                handle = safe_open(str(file), framework="pt")
                offsets = handle.get_tensor("offsets").numpy()
                shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in ("ids", "logp", "rest")}
                map_offsets = {}
                for kind in (self.attention or {}).get("kinds", ()):
                    maps, where = attention_tensors(kind)
                    map_offsets[kind] = handle.get_tensor(where).numpy()
                    shapes[maps] = tuple(handle.get_slice(maps).get_shape())
            except (SafetensorError, OSError, KeyError) as e:
                raise UserError(f"{file}: damaged or missing ({str(e).splitlines()[0] if str(e) else 'unreadable'}); "
                                f"remove {self.path} and build the cache again") from None
            n = shard["end"] - shard["start"]
            expected = {"ids": (shard["positions"], self.topk), "logp": (shard["positions"], self.topk),
                        "rest": (shard["positions"],)}
            expected.update({attention_tensors(kind)[0]: (int(where[-1]),) for kind, where in map_offsets.items()})
            if len(offsets) != n + 1 or shapes != expected or any(len(o) != n + 1 for o in map_offsets.values()):
                raise UserError(f"{file}: does not match {INDEX_FILE}; remove {self.path} and build the cache again")
            self._files.append(handle)
            self._offsets.append(offsets)
            self._map_offsets.append(map_offsets)

    def __len__(self) -> int:
        return int(self.index["data"]["examples"])

    def check_temperature(self, temperature: float, teacher="TEACHER", data="DATA") -> None:
        """Refuse (one line) a cache built at another temperature than ``temperature`` (the run's ``kd_temperature``)."""
        if not math.isclose(self.temperature, float(temperature), rel_tol=1e-9, abs_tol=0.0):
            raise UserError(f"kd_cache={self.path}: built at temperature {self.temperature:g}, this run's "
                            f"kd_temperature is {float(temperature):g}; build a matching cache with "
                            + build_command(self.topk, float(temperature), teacher, data))

    def check(self, data_dir: Path | str, data, vocab, model_dir: Path | str, teacher: str | None = None) -> None:
        """Refuse (one line) a cache made from another teacher (weights or config) or other data than this run's.

        ``model_dir`` is the teacher's model folder (a run's ``best/``: :func:`a2d.models.resolve_model_dir`);
        ``teacher`` how the messages name it (the teacher as the run was given it; default: ``model_dir``)."""
        model_dir = Path(model_dir)
        teacher = str(model_dir) if teacher is None else teacher
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
        for kind in (self.attention or {}).get("kinds", ()):
            sizes = np.concatenate([np.diff(o[kind]) for o in self._map_offsets])
            if not np.array_equal(sizes, map_sizes(self.attention, kind, data.src_lens, data.tgt_lens)):
                raise UserError(f"{where}: its {kind} attention maps do not match the examples of {data_dir}; "
                                "build the cache again")
        made = self.index["teacher"]
        if sha256_file(model_dir / "model.safetensors") != made["sha256"]:
            raise UserError(f"{where}: made with another teacher ({made['path']}) than the run's, {teacher}; build a "
                            "cache with this teacher or give that one")
        if sha256_file(model_dir / "config.json") != made.get("config_sha256"):
            raise UserError(f"{where}: made with the same weights as the run's teacher {teacher} but another "
                            f"config.json ({model_dir / 'config.json'} has changed since); build the cache again with "
                            "this teacher")

    def lookup(self, indices, width: int) -> dict[str, torch.Tensor]:
        """The batch entries :func:`a2d.losses.cached_word_kd` reads, for the examples ``indices`` (the batch's, in
        its order): ``{IDS_KEY: (B, width, K) int64, LOGP_KEY: (B, width, K) fp32, REST_KEY: (B, width) fp32}``;
        rows past an example's positions are 0. ``width`` is the batch's ``labels.shape[1]``."""
        ids = torch.zeros(len(indices), width, self.topk, dtype=torch.long)
        logp = torch.zeros(len(indices), width, self.topk, dtype=torch.float32)
        rest = torch.zeros(len(indices), width, dtype=torch.float32)
        for row, i in enumerate(indices):
            s = int(np.searchsorted(self.starts, i, side="right")) - 1
            local = int(i) - int(self.starts[s])
            a, b = int(self._offsets[s][local]), int(self._offsets[s][local + 1])
            if b - a > width:
                raise ValueError(f"example {i} has {b - a} cached positions, the batch only {width}")
            handle = self._files[s]
            ids[row, :b - a] = handle.get_slice("ids")[a:b]
            logp[row, :b - a] = handle.get_slice("logp")[a:b]
            rest[row, :b - a] = handle.get_slice("rest")[a:b]
        return {IDS_KEY: ids, LOGP_KEY: logp, REST_KEY: rest}

    def lookup_maps(self, indices, batch: dict[str, torch.Tensor], kinds) -> dict[str, torch.Tensor]:
        """The teacher's maps of ``kinds`` for the examples ``indices`` of ``batch`` (their collated tensors, in
        that order): ``{TEACHER_MAPS[kind]: (B, N*M, Lq, Lk) float16}`` with the batch's widths, 0 outside each
        example's real cells (:func:`a2d.attention.cached_attention` reads them)."""
        if not self.attention:
            raise ValueError(f"{self.path} holds no attention maps")
        src = batch["attention_mask"].sum(1).tolist()
        tgt = batch["decoder_attention_mask"].sum(1).tolist()
        widths = {"enc_self": (batch["input_ids"].shape[1],) * 2,
                  "dec_self": (batch["decoder_input_ids"].shape[1],) * 2,
                  "dec_cross": (batch["decoder_input_ids"].shape[1], batch["input_ids"].shape[1])}
        out = {}
        for kind in kinds:
            if kind not in self.attention["kinds"]:
                raise ValueError(f"{self.path} holds no {kind} maps")
            c = int(self.attention["layers"][kind]) * int(self.attention["heads"][kind])
            maps = torch.zeros(len(indices), c, *widths[kind], dtype=torch.float16)
            for row, i in enumerate(indices):
                s = int(np.searchsorted(self.starts, i, side="right")) - 1
                local = int(i) - int(self.starts[s])
                offsets = self._map_offsets[s][kind]
                a, b = int(offsets[local]), int(offsets[local + 1])
                lq, lk = {"enc_self": (src[row], src[row]), "dec_self": (tgt[row], tgt[row]),
                          "dec_cross": (tgt[row], src[row])}[kind]
                if b - a != c * lq * lk:
                    raise ValueError(f"example {i}: {b - a} cached {kind} cells, the batch gives {c} x {lq} x {lk}")
                maps[row, :, :lq, :lk] = self._files[s].get_slice(attention_tensors(kind)[0])[a:b].view(c, lq, lk)
            out[TEACHER_MAPS[kind]] = maps
        return out


__all__ = ["write_index", "read_index", "shard_name", "attention_tensors", "map_sizes", "ids_dtype", "teacher_identity",
           "data_identity", "build_command", "TeacherCache", "describe", "IDS_KEY", "LOGP_KEY", "REST_KEY",
           "INDEX_FILE", "SHARD_TENSORS"]
