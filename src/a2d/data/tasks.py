"""Data of the other model families (:mod:`a2d.families`): sentence(-pair) classification and language modelling.

A prepared folder, written whole by :func:`prepare_task` (``a2d prepare-task``)::

    DIR/meta.json               task (classification or lm), family, labels and metric, the sources' checksums
    DIR/tokenizer.json ...      a Hugging Face tokenizer (AutoTokenizer loads DIR): the teacher's, or one trained
                                here on the training split (WordPiece for bert, byte-level BPE for gpt2 / llama)
    DIR/{train,valid,test}.safetensors   token ids (flat, with offsets), token types, labels

Sources:

* GLUE's own TSV layout (:func:`read_glue`): a task folder as GLUE distributes it (``SST-2/train.tsv`` and
  ``dev.tsv``...); dev is the validation split (GLUE's test labels are not public), and the metric is GLUE's
  (accuracy; F1 for MRPC and QQP; Matthews correlation for CoLA).
* A stand-in built from Multi30k (:func:`multi30k_pairs`), for measuring without GLUE: is this English sentence
  the translation of this German one? Half the pairs are true translations, half a hard negative: the English
  sentence, among 64 drawn at random, that shares the most words with the true translation.
* Plain text, one sentence or document per line (:func:`read_text_splits`), for a language model: the English
  side of Multi30k stands in.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from a2d.data.corpus import locate_corpus, read_lines
from a2d.errors import UserError
from a2d.utils import atomic_dir, read_json, sha256_file

META_FILE = "meta.json"
SPLIT_NAMES = ("train", "valid", "test")
#: GLUE tasks a2d reads: folder name, the TSV columns of the first and second text and of the label, the label
#: names (in label id order), the metric GLUE reports, and the validation file.
GLUE = {
    "sst2": {"folder": "SST-2", "text": ("sentence", None), "label": "label", "labels": ["0", "1"],
             "metric": "accuracy"},
    "cola": {"folder": "CoLA", "text": (3, None), "label": 1, "labels": ["0", "1"], "metric": "mcc",
             "header": False},
    "mrpc": {"folder": "MRPC", "text": ("#1 String", "#2 String"), "label": "Quality", "labels": ["0", "1"],
             "metric": "f1"},
    "qqp": {"folder": "QQP", "text": ("question1", "question2"), "label": "is_duplicate", "labels": ["0", "1"],
            "metric": "f1"},
    "qnli": {"folder": "QNLI", "text": ("question", "sentence"), "label": "label",
             "labels": ["entailment", "not_entailment"], "metric": "accuracy"},
    "rte": {"folder": "RTE", "text": ("sentence1", "sentence2"), "label": "label",
            "labels": ["entailment", "not_entailment"], "metric": "accuracy"},
    "wnli": {"folder": "WNLI", "text": ("sentence1", "sentence2"), "label": "label", "labels": ["0", "1"],
             "metric": "accuracy"},
    "mnli": {"folder": "MNLI", "text": ("sentence1", "sentence2"), "label": "gold_label",
             "labels": ["contradiction", "entailment", "neutral"], "metric": "accuracy", "dev": "dev_matched.tsv"},
}
METRICS = ("accuracy", "f1", "mcc", "perplexity")


@dataclass
class Example:
    """One classification example (``text_b`` None for single sentences) or one line of text (``label`` None)."""

    text_a: str
    text_b: str | None = None
    label: int | None = None


# ------------------------------------------------------------------------------------------------ sources
def glue_task(folder: Path | str, task: str | None = None) -> str:
    """The GLUE task of ``folder`` (``task``, or its folder name: ``SST-2`` -> ``sst2``)."""
    folder = Path(folder)
    if task is None:
        by_folder = {spec["folder"].lower(): name for name, spec in GLUE.items()}
        task = by_folder.get(folder.name.lower(), folder.name.lower().replace("-", ""))
    if task not in GLUE:
        raise UserError(f"{folder}: not a GLUE task a2d reads (name it with glue_task: {', '.join(GLUE)})")
    return task


def read_glue(folder: Path | str, task: str | None = None) -> tuple[str, dict[str, list[Example]]]:
    """``(task, {"train": [...], "valid": [...]})`` from a GLUE task folder (``train.tsv`` and ``dev.tsv``)."""
    folder = Path(folder)
    task = glue_task(folder, task)
    spec = GLUE[task]
    files = {"train": folder / "train.tsv", "valid": folder / spec.get("dev", "dev.tsv")}
    for path in files.values():
        if not path.is_file():
            raise UserError(f"{path}: no such file (a GLUE {spec['folder']} folder has train.tsv and "
                            f"{spec.get('dev', 'dev.tsv')})")
    return task, {split: _read_tsv(path, spec) for split, path in files.items()}


def _read_tsv(path: Path, spec: dict) -> list[Example]:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.get("header", True):
        if not rows:
            raise UserError(f"{path}: empty")
        header, rows, first = rows[0], rows[1:], 2
        where = {}
        for column in (*spec["text"], spec["label"]):
            if column is not None and column not in header:
                raise UserError(f"{path}:1: no {column!r} column (the header has {', '.join(header)})")
            where[column] = header.index(column) if column is not None else None
    else:
        first, where = 1, {c: c for c in (*spec["text"], spec["label"]) if c is not None}
    label_id = {name: i for i, name in enumerate(spec["labels"])}
    a_col, b_col = spec["text"]
    out = []
    for n, row in enumerate(rows, start=first):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            a = row[where[a_col]]
            b = row[where[b_col]] if b_col is not None else None
            raw = row[where[spec["label"]]].strip()
        except IndexError:
            raise UserError(f"{path}:{n}: {len(row)} columns, fewer than the header's") from None
        if raw not in label_id:
            raise UserError(f"{path}:{n}: label {raw!r} is not one of {', '.join(spec['labels'])}")
        out.append(Example(a.strip(), b.strip() if b is not None else None, label_id[raw]))
    return out


def _words(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'()").lower() for w in text.split()} - {""}


def multi30k_pairs(corpus: dict[str, tuple[Path, Path]], seed: int = 1, candidates: int = 64,
                   max_train: int | None = None) -> dict[str, list[Example]]:
    """The stand-in pair-classification task: German sentence + English sentence -> is it its translation?

    ``corpus`` is Multi30k De-En (:func:`a2d.data.corpus.locate_corpus`: ``{split: (de_file, en_file)}``). Each
    German sentence appears once, with its own translation (label 1) or with a hard negative (label 0), chosen
    at random half and half: among ``candidates`` English sentences of the same split drawn at random, the one
    sharing the most words with the true translation. Deterministic for a ``seed``.
    """
    rng = random.Random(seed)
    splits = {}
    for split in SPLIT_NAMES:
        de, en = (read_lines(p) for p in corpus[split])
        if len(de) != len(en):
            raise UserError(f"{corpus[split][0]}: {len(de)} lines, but {corpus[split][1]} has {len(en)}")
        n = len(de) if split != "train" or max_train is None else min(max_train, len(de))
        words = [_words(s) for s in en]
        examples = []
        for i in range(n):
            if rng.random() < 0.5:
                examples.append(Example(de[i], en[i], 1))
                continue
            pool = [j for j in rng.sample(range(len(en)), min(candidates, len(en))) if en[j] != en[i]]
            j = max(pool, key=lambda k: (len(words[k] & words[i]), -k))
            examples.append(Example(de[i], en[j], 0))
        splits[split] = examples
    return splits


def read_text_splits(files: dict[str, Path | str]) -> dict[str, list[Example]]:
    """``{split: [Example(line)]}`` from plain (or gzip) text files, one sentence or document per line; empty
    lines are dropped."""
    return {split: [Example(line) for line in read_lines(path) if line] for split, path in files.items()}


# ------------------------------------------------------------------------------------------------ tokenizers
def train_tokenizer(family: str, texts: list[str], vocab_size: int, max_length: int):
    """A Hugging Face tokenizer trained on ``texts``: WordPiece (BERT's, cased) for ``bert``, byte-level BPE (GPT-2's)
    for ``gpt2`` and ``llama``. ``AutoTokenizer`` loads what its ``save_pretrained`` writes."""
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from transformers import BertTokenizerFast, GPT2TokenizerFast

    if family == "bert":
        tok = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
        tok.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        return BertTokenizerFast(tokenizer_object=tok._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                 cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, show_progress=False, special_tokens=["<|endoftext|>", "<pad>"])
    return GPT2TokenizerFast(tokenizer_object=tok._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", pad_token="<pad>", model_max_length=max_length)


def load_tokenizer(folder: Path | str):
    """The Hugging Face tokenizer of a folder (a prepared data folder, a model folder), one line if there is none."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder (a model or data folder with its tokenizer files)")
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{folder}: no tokenizer that transformers' AutoTokenizer loads ({str(e).splitlines()[0]})") \
            from None


def special_ids(tokenizer) -> dict:
    """The ids a model of the tokenizer's family is built with."""
    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    if pad is None:
        raise UserError("the tokenizer has no padding token (set pad_token)")
    return {"pad_token_id": int(pad), "eos_token_id": None if eos is None else int(eos),
            "bos_token_id": None if bos is None else int(bos)}


class TokenizerFiles:
    """A Hugging Face tokenizer as a run folder keeps it (:meth:`a2d.rundir.RunDir.save`): saved into each model
    folder, and identified by a checksum of its vocabulary (a resumed run must keep it)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, folder: Path | str) -> TokenizerFiles:
        return cls(load_tokenizer(folder))

    def __len__(self) -> int:
        return len(self.tokenizer)

    def save(self, folder: Path | str, model_folder: bool = True, max_length: int | None = None) -> None:
        if max_length is not None:
            self.tokenizer.model_max_length = max_length
        self.tokenizer.save_pretrained(folder)

    def checksum(self) -> str:
        vocab = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------ prepared data
class TaskData:
    """One split of a prepared folder: ``ids[i]`` (int64 array), ``types[i]`` (token types), ``labels`` (int64, -1
    without labels), ``lengths``; ``meta`` the folder's."""

    def __init__(self, ids: list[np.ndarray], types: list[np.ndarray], labels: np.ndarray, meta: dict):
        self.ids, self.types, self.labels, self.meta = ids, types, labels, meta
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def load(cls, data_dir: Path | str, split: str) -> TaskData:
        from safetensors.numpy import load_file

        data_dir = Path(data_dir)
        meta = load_task_meta(data_dir)
        path = data_dir / f"{split}.safetensors"
        if not path.is_file():
            raise UserError(f"{path}: no such file (the {split} split of {data_dir})")
        arrays = load_file(path)
        offsets = arrays["offsets"]
        cut = lambda flat: [flat[offsets[i]:offsets[i + 1]].astype(np.int64) for i in range(len(offsets) - 1)]  # noqa: E731
        return cls(cut(arrays["ids"]), cut(arrays["types"]), arrays["labels"].astype(np.int64), meta)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        offsets = np.zeros(len(self.ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(self.lengths)
        flat = lambda seqs: np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)  # noqa: E731
        save_file({"ids": flat(self.ids), "types": flat(self.types).astype(np.int8), "offsets": offsets,
                   "labels": self.labels.astype(np.int64)}, str(path))


def load_task_meta(data_dir: Path | str) -> dict:
    """``meta.json`` of a folder :func:`prepare_task` wrote; one line for anything else."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise UserError(f"{data_dir}: not a prepared data folder (no {META_FILE}; a2d prepare-task writes one)")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("task") not in ("classification", "lm"):
        raise UserError(f"{path}: not a classification or lm folder's meta (a2d prepare-task writes one)")
    return meta


def data_task(data_dir: Path | str) -> str:
    """The task of a prepared data folder: ``translation`` (``a2d prepare``), ``classification`` or ``lm``
    (``a2d prepare-task``)."""
    path = Path(data_dir) / META_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return "translation"  # a2d prepare's folders (and their own errors) are the translation recipes'
    return meta.get("task", "translation") if isinstance(meta, dict) else "translation"


def encode(tokenizer, examples: list[Example], task: str, max_len: int) -> TaskData:
    """Token ids of the examples (``[CLS] a [SEP] b [SEP]`` for BERT pairs; ``<|endoftext|> text <|endoftext|>`` for
    a language model), cut to ``max_len`` tokens (pairs: the longer text loses tokens first)."""
    ids, types = [], []
    if task == "classification":
        for ex in examples:
            enc = tokenizer(ex.text_a, ex.text_b, truncation="longest_first" if ex.text_b is not None else True,
                            max_length=max_len)
            ids.append(np.array(enc["input_ids"], dtype=np.int64))
            types.append(np.array(enc.get("token_type_ids") or [0] * len(enc["input_ids"]), dtype=np.int64))
    else:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        for ex in examples:
            body = tokenizer(ex.text_a, add_special_tokens=False)["input_ids"][:max_len - 2]
            seq = [bos, *body, eos]
            ids.append(np.array(seq, dtype=np.int64))
            types.append(np.zeros(len(seq), dtype=np.int64))
    labels = np.array([-1 if ex.label is None else ex.label for ex in examples], dtype=np.int64)
    return TaskData(ids, types, labels, {})


def prepare_task(out_dir: Path | str, task: str, family: str, splits: dict[str, list[Example]], *,
                 label_names: list[str] | None = None, metric: str | None = None, tokenizer_from: Path | str | None = None,
                 vocab_size: int = 8000, max_len: int = 128, source: dict | None = None, log=print) -> dict:
    """Write a prepared folder (layout in the module's docstring) whole, or nothing: its tokenizer (``tokenizer_from``,
    a teacher's folder, or one trained on the training split) and the encoded splits. Returns its meta."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not an empty folder; choose another output folder")
    if "train" not in splits or "valid" not in splits:
        raise UserError("a prepared folder needs a train and a valid split")
    for split, examples in splits.items():
        if not examples:
            raise UserError(f"the {split} split is empty")
    if task == "classification":
        label_names = label_names or [str(i) for i in range(max(ex.label for ex in splits["train"]) + 1)]
        metric = metric or "accuracy"
    else:
        metric = "perplexity"
    if tokenizer_from is not None:
        tokenizer = load_tokenizer(tokenizer_from)
    else:
        texts = [t for ex in splits["train"] for t in (ex.text_a, ex.text_b) if t]
        tokenizer = train_tokenizer(family, texts, vocab_size, max_len)
    tokenizer.model_max_length = max_len
    meta = {"task": task, "family": family, "metric": metric, "max_len": max_len, "vocab_size": len(tokenizer),
            "tokenizer": str(tokenizer_from) if tokenizer_from else f"trained here on the train split ({vocab_size})",
            "source": source or {}, "splits": {}}
    if task == "classification":
        meta["label_names"] = list(label_names)
        meta["pair"] = any(ex.text_b is not None for ex in splits["train"])
    with atomic_dir(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        for split, examples in splits.items():
            data = encode(tokenizer, examples, task, max_len)
            data.save(tmp / f"{split}.safetensors")
            entry = {"examples": len(data), "tokens": int(data.lengths.sum())}
            if task == "classification":
                entry["label_counts"] = np.bincount(data.labels, minlength=len(label_names)).tolist()
            meta["splits"][split] = entry
            log(f"{split}: {len(data):,} examples, {int(data.lengths.sum()):,} tokens")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


#: Stand-ins built from Multi30k, by task: what measures each family without GLUE or a web corpus.
STANDINS = {"classification": "multi30k-pairs", "lm": "multi30k-en"}
FAMILY_OF_TASK = {"classification": ("bert",), "lm": ("gpt2", "llama")}


def prepare_sources(out_dir: Path | str, task: str, family: str | None = None, glue: Path | str | None = None,
                    glue_name: str | None = None, standin: str | None = None, files: dict | None = None,
                    tokenizer: Path | str | None = None, vocab_size: int = 8000, max_len: int = 128,
                    max_train: int | None = None, seed: int = 1, log=print) -> dict:
    """Read one source (a GLUE task folder, a stand-in, or text files ``{split: path}``) and :func:`prepare_task` it."""
    if task not in FAMILY_OF_TASK:
        raise UserError(f"task {task!r}: must be classification or lm")
    family = family or FAMILY_OF_TASK[task][0]
    if family not in FAMILY_OF_TASK[task]:
        raise UserError(f"family {family!r}: a {task} model is {' or '.join(FAMILY_OF_TASK[task])}")
    given = [name for name, value in (("glue", glue), ("standin", standin), ("files", files)) if value]
    if len(given) != 1:
        raise UserError("give one source: a GLUE task folder, a stand-in, or text files"
                        + (f" (got {', '.join(given)})" if given else ""))
    labels = metric = None
    if glue:
        if task != "classification":
            raise UserError("a GLUE folder is a classification task")
        name, splits = read_glue(glue, glue_name)
        labels, metric = GLUE[name]["labels"], GLUE[name]["metric"]
        source = {"glue": name, "files": file_checksums(sorted(Path(glue).glob("*.tsv")))}
    elif standin:
        if standin != STANDINS[task]:
            raise UserError(f"stand-in {standin!r}: the {task} stand-in is {STANDINS[task]}")
        corpus = locate_corpus("multi30k", "de", "en")
        if task == "classification":
            splits = multi30k_pairs(corpus, seed=seed, max_train=max_train)
            labels, metric = ["other", "translation"], "accuracy"
        else:
            splits = read_text_splits({split: en for split, (_, en) in corpus.items()})
        source = {"standin": standin, "seed": seed,
                  "files": file_checksums([p for pair in corpus.values() for p in pair])}
    else:
        if task != "lm":
            raise UserError("text files are a language-modelling source (classification: a GLUE folder or a stand-in)")
        for split, path in files.items():
            if not Path(path).is_file():
                raise UserError(f"{path}: no such file (the {split} text)")
        splits = read_text_splits(files)
        source = {"files": file_checksums(files.values())}
    if max_train is not None and "train" in splits:
        splits["train"] = splits["train"][:max_train]
    return prepare_task(out_dir, task, family, splits, label_names=labels, metric=metric, tokenizer_from=tokenizer,
                        vocab_size=vocab_size, max_len=max_len, source=source, log=log)


def file_checksums(paths) -> dict:
    """``{name: sha256}`` of source files, for a prepared folder's ``meta.json``."""
    return {str(p): sha256_file(p) for p in paths}


__all__ = ["Example", "TaskData", "TokenizerFiles", "GLUE", "METRICS", "read_glue", "glue_task", "multi30k_pairs", "read_text_splits",
           "train_tokenizer", "load_tokenizer", "special_ids", "prepare_task", "load_task_meta", "data_task", "encode",
           "file_checksums", "prepare_sources", "STANDINS"]
