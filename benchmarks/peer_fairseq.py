"""Side by side with the authors' fairseq code: teacher, plain student and A2D student, N updates each.

Run on demand (never in CI, not a test), on a quiet machine, from the a2d virtual environment:

    .venv/bin/python benchmarks/peer_fairseq.py --data runs/demo-q1/data --updates 10 \\
        --out benchmarks/results/peer-fairseq-cpu

What it does, in one invocation:

1. **The peer's environment.** A virtual environment of its own (``--venv``, default
   ``~/.cache/a2d/peer-fairseq-venv``; reused when its marker file says it holds this snapshot with this patch):
   ``torch==2.13.0`` (the exact pin takes the CPU wheel), the snapshot copied to a temporary build folder,
   ``peer_fairseq.patch`` applied there, and ``pip install --no-build-isolation --no-deps`` of it, with its
   dependencies named here (``PEER_DEPS``). Its ``hydra-core<1.1`` / ``omegaconf<2.1`` pins are on the
   registry, but hydra-core 1.0.x does not import on Python 3.11 (its own dataclasses have instance
   defaults), so it gets hydra-core 1.3.2 and omegaconf 2.3.0, which fairseq 0.12.2 runs with once the
   patch below is in. ``einops`` is added: the authors' attention code imports it and their setup.py does
   not list it.
2. **The same data.** The prepared directory's token ids (``train``/``valid.safetensors``, exactly what
   ``a2d`` trains on) are written back as SentencePiece pieces of the same model, one sentence per line;
   ``dict.txt`` lists the same vocabulary (pieces 4..V-1 in id order, so fairseq's ids equal a2d's past its
   four specials); ``fairseq-preprocess --joined-dictionary --srcdict dict.txt`` binarises them. Every
   binarised sentence is then checked against a2d's ids (plus fairseq's ``</s>``; ``<unk>`` 1 -> 3).
3. **Their runs**, with the flags of ``train_teacher.sh`` (teacher ``transformer_teacher``; plain student
   ``transformer_student_4heads`` with the same flags) and ``train_student.sh`` (``transformer_student_4heads_A2D``,
   ``kd_translation`` / ``kd_label_smoothed_cross_entropy``, its teacher the fairseq teacher just trained
   for N updates). Changed for the benchmark: ``--cpu`` (fp32), ``--max-update N`` instead of
   ``--max-epoch 100 --patience 10``, ``--log-format json --log-interval 1``. Removed, because they would
   spoil the timing or need validation: ``--eval-bleu*`` (beam search on the valid set),
   ``--best-checkpoint-metric bleu --maximize-best-checkpoint-metric``, ``--keep-last-epochs 2``; added
   ``--disable-validation`` and ``--no-epoch-checkpoints``, and ``--no-save`` for the students (the teacher
   saves ``checkpoint_last.pt`` once, after its last update). Their default ``--num-workers 1`` (one data
   loader process) is kept: it is what their scripts run.
4. **a2d's runs** on the same prepared directory: ``a2d train`` (6+6 teacher), ``a2d train`` (3+3 student)
   and ``a2d distill --method a2d`` from that a2d teacher, with the paper presets (the A2D student with
   ``paper-student+a2d-paper``, the authors' loss arithmetic), the sizes of the fairseq architectures given
   as explicit ``key=value`` overrides, ``max_tokens``, ``log_every=1``, ``precision=no`` (fp32),
   ``--max-steps N``. a2d validates only at an epoch's end, so N updates run no validation.

Both sides run with ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = ``--threads`` (2). Per update, fairseq's
``train_inner`` line gives ``wps`` (target tokens, ``</s>`` included, per second since the previous line) and
``wpb`` (target tokens); seconds per update = wpb / wps. a2d's ``metrics.jsonl`` train lines give
``tokens_per_s`` (the same quantity); its tokens per update come from a2d's own batcher with the recipe's
arguments (``token_batches(..., shuffle=True, seed, epoch=1)``), seconds = tokens / tokens_per_s. The first
``--warmup`` (2) updates of every run are dropped; tokens/s = kept tokens / kept seconds. Peak memory is
the largest resident set of the run's process tree (``os.wait4``'s ``ru_maxrss``, as ``/usr/bin/time -v``).

Not the same on both sides, and said in the table: the batches (both cut at 4096 padded tokens, each
with its own sort), and the embeddings: their flags give the encoder its own embedding table and tie
only the decoder's input and output embeddings, while a2d's Marian models share one table for all three
(``a2d`` has no switch for that), so their models have V x d_model (4.1M) more parameters.

``peer_fairseq.patch`` (against commit 08340a2), hunk by hunk:

* ``setup.py``: drop the ``alignment_train_cpu_binding`` extension; its source
  ``examples/operators/alignment_train_cpu.cpp`` is not in the snapshot (only ``examples/translation``
  is), so the build fails. Nothing in the translation/A2D path uses it.
* ``fairseq/dataclass/configs.py``, ``fairseq/models/transformer/transformer_config.py``: config groups
  given as dataclass instances (``common: CommonConfig = CommonConfig()``) become
  ``field(default_factory=...)``; Python 3.11 rejects unhashable instance defaults at class creation.
* ``fairseq/dataclass/initialize.py``: ``hydra_init`` registers each group's ``.default``, which is now
  ``MISSING``; it takes ``default_factory()`` instead.
* ``fairseq/checkpoint_utils.py``: ``torch.load(..., weights_only=False)``; torch >= 2.6 loads weights
  only by default and refuses the ``argparse.Namespace`` inside fairseq checkpoints (the A2D student
  loads the teacher this way).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sentencepiece as spm
from safetensors.numpy import load_file

from a2d.data.batching import token_batches
from a2d.data.prepare import ParallelData, load_meta
from a2d.provenance import git_commit
from a2d.utils import atomic_write_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PATCH = HERE / "peer_fairseq.patch"
PEER = Path("/work/shared/peers/ncsoft-align-to-distill")
PEER_COMMIT = "08340a2"
TORCH = "torch==2.13.0"
PEER_DEPS = ["numpy", "cython", "setuptools", "wheel", "cffi", "regex", "sacrebleu", "tqdm", "bitarray",
             "sacremoses", "einops", "hydra-core==1.3.2", "omegaconf==2.3.0"]
MARKER = "a2d-peer-fairseq.json"

# The three rows: the fairseq architecture (custom/__init__.py) and a2d's preset with the same sizes.
ROWS = {
    "teacher": {"title": "6+6 teacher", "arch": "transformer_teacher", "preset": "paper-teacher",
                "sizes": dict(encoder_layers=6, decoder_layers=6)},
    "student": {"title": "3+3 student (no KD)", "arch": "transformer_student_4heads", "preset": "paper-student",
                "sizes": dict(encoder_layers=3, decoder_layers=3)},
    "a2d": {"title": "3+3 A2D student", "arch": "transformer_student_4heads_A2D",
            "preset": "paper-student+a2d-paper", "sizes": dict(encoder_layers=3, decoder_layers=3)},
}
COMMON_SIZES = dict(encoder_attention_heads=4, decoder_attention_heads=4, d_model=512, ffn_dim=1024,
                    dropout=0.3, attention_dropout=0.0, activation_dropout=0.0, activation_function="relu")
# train_teacher.sh / train_student.sh, less what needs validation (see the docstring)
THEIR_FLAGS = ["--share-decoder-input-output-embed", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
               "--clip-norm", "0.0", "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
               "--dropout", "0.3", "--weight-decay", "0.0001"]


def log(msg: str) -> None:
    print(f"[peer_fairseq {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_if_quiet_requested(flag: Path = Path("/work/runs/QUIET")) -> None:
    """Someone is measuring: do not compile or install while ``flag`` exists."""
    while flag.exists():
        log(f"{flag} exists; waiting")
        time.sleep(30)


# ------------------------------------------------------------------------------------ the peer's venv
def ensure_venv(venv: Path, peer: Path) -> Path:
    """A venv with the patched snapshot installed; reused when its marker matches. Returns its bin/."""
    want = {"peer": str(peer), "peer_commit": PEER_COMMIT, "patch_sha256": sha256(PATCH), "torch": TORCH,
            "deps": PEER_DEPS, "python": platform.python_version()}
    marker = venv / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want and (venv / "bin" / "fairseq-train").exists():
        log(f"reusing {venv}")
        return venv / "bin"
    if venv.exists():
        if not marker.is_file():
            sys.exit(f"--venv {venv}: exists and was not made by this script; choose another --venv")
        log(f"{venv}: made for another snapshot, patch or pins; rebuilding")
        shutil.rmtree(venv)
    wait_if_quiet_requested()
    log(f"creating {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + [TORCH, *PEER_DEPS], check=True)
    with tempfile.TemporaryDirectory(prefix="peer-fairseq-build-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(peer, src, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        for p in [src, *src.rglob("*")]:  # the snapshot is read-only; the build writes into its copy
            p.chmod(p.stat().st_mode | 0o200)
        subprocess.run(["patch", "-p1", "--forward", "--quiet", "-i", str(PATCH)], cwd=src, check=True)
        log("building and installing the patched snapshot (C++/Cython extensions: a few minutes)")
        wait_if_quiet_requested()
        env = {**os.environ, "MAX_JOBS": "2"}
        subprocess.run(pip + ["--no-build-isolation", "--no-deps", str(src)], cwd=tmp, env=env, check=True)
    check = subprocess.run([str(venv / "bin" / "fairseq-train"), "--help"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"fairseq-train does not start in {venv}:\n{check.stderr[-3000:]}")
    marker.write_text(json.dumps(want, indent=2) + "\n")
    return venv / "bin"


# ------------------------------------------------------------------------------------ the same data
def fairseq_data(data: Path, work: Path, bin_dir: Path) -> Path:
    """Binarise the prepared directory's train/valid ids for fairseq; check them; return the data-bin."""
    meta = load_meta(data)
    src, tgt = meta["src"], meta["tgt"]
    sp = spm.SentencePieceProcessor(model_file=str(data / "sentencepiece.model"))
    text = work / "fairseq-text"
    text.mkdir(parents=True, exist_ok=True)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    bad = [p for p in pieces[4:] if not p or any(c.isspace() for c in p)]
    if bad:
        sys.exit(f"pieces fairseq cannot read as tokens: {bad[:5]}")
    (text / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces[4:]), encoding="utf-8")
    expected = {}
    for split in ("train", "valid"):
        arrays = load_file(str(data / f"{split}.safetensors"))
        for side, lang in (("src", src), ("tgt", tgt)):
            tokens, offsets = arrays[f"{side}_tokens"], arrays[f"{side}_offsets"]
            with open(text / f"{split}.{lang}", "w", encoding="utf-8") as f:
                for i in range(len(offsets) - 1):
                    f.write(" ".join(pieces[t] for t in tokens[offsets[i]:offsets[i + 1]]) + "\n")
            np.save(text / f"{split}.{lang}.tokens.npy", tokens)
            np.save(text / f"{split}.{lang}.offsets.npy", offsets)
            expected[f"{split}.{lang}"] = len(offsets) - 1
    out = work / "fairseq-bin"
    subprocess.run([str(bin_dir / "fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt,
                    "--trainpref", str(text / "train"), "--validpref", str(text / "valid"),
                    "--srcdict", str(text / "dict.txt"), "--joined-dictionary", "--destdir", str(out),
                    "--workers", "2"], check=True, capture_output=True, env=thread_env(2))
    check = f"""
import numpy as np
from fairseq.data import Dictionary, data_utils
for name in {sorted(expected)!r}:
    split, lang = name.split(".")
    d = Dictionary.load("{out}/dict." + lang + ".txt")
    assert len(d) == {len(pieces)} and d.pad() == 1 and d.eos() == 2 and d.unk() == 3, len(d)
    ds = data_utils.load_indexed_dataset("{out}/" + split + ".{src}-{tgt}." + lang, d)
    tok = np.load("{text}/" + name + ".tokens.npy"); off = np.load("{text}/" + name + ".offsets.npy")
    assert len(ds) == len(off) - 1, (name, len(ds))
    for i in range(len(ds)):
        want = tok[off[i]:off[i + 1]].astype(np.int64)
        want = np.append(np.where(want == 1, 3, want), 2)
        assert np.array_equal(ds[i].numpy(), want), (name, i)
print("same ids")
"""
    res = subprocess.run([str(bin_dir / "python"), "-c", check], capture_output=True, text=True)
    if res.returncode != 0 or "same ids" not in res.stdout:
        sys.exit(f"fairseq's binarised data differ from {data}:\n{res.stderr[-3000:]}")
    log(f"binarised {data} into {out}; every sentence has a2d's ids")
    return out


# ------------------------------------------------------------------------------------ running
def thread_env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], log_file: Path, threads: int) -> dict:
    """Run ``cmd`` with its output in ``log_file``; its wall time, peak RSS (process tree) and load."""
    log("$ " + shlex.join(cmd))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=thread_env(threads))
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log_file.read_text(errors="replace")[-4000:]
        sys.exit(f"failed ({code}): {shlex.join(cmd)}\n{tail}")
    return {"command": shlex.join(cmd), "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]}


def fairseq_updates(log_file: Path) -> tuple[list[dict], int | None]:
    """Per-update (tokens, seconds) from fairseq's train_inner json lines, and its parameter count."""
    updates, params = [], None
    for line in log_file.read_text(errors="replace").splitlines():
        if "num. shared model params:" in line:
            params = int(line.split("num. shared model params:")[1].split("(")[0].replace(",", ""))
        if "| train_inner | " in line:
            rec = json.loads(line.split("| train_inner | ", 1)[1])
            wpb, wps = float(rec["wpb"]), float(rec["wps"])
            updates.append({"update": int(rec["num_updates"]), "tokens": wpb,
                            "seconds": wpb / wps if wps > 0 else float("nan")})
    return updates, params


def a2d_updates(run_dir: Path, log_file: Path, batch_tokens: list[int]) -> tuple[list[dict], int | None]:
    """Per-update (tokens, seconds) from a2d's metrics.jsonl, and its parameter count (the student's)."""
    updates = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("type") == "train":
            n = batch_tokens[rec["update"] - 1]
            updates.append({"update": rec["update"], "tokens": n, "seconds": n / rec["tokens_per_s"]})
    params = None
    for line in log_file.read_text(errors="replace").splitlines():
        for key in ("model: ", "student: "):
            if key in line and " parameters" in line:
                params = int(line.split(key, 1)[1].split(" parameters")[0].replace(",", ""))
    return updates, params


def a2d_batch_tokens(data: Path, max_tokens: int, seed: int, n: int) -> list[int]:
    """Target tokens (``</s>`` included) of a2d's first ``n`` updates: the recipes' own batching call."""
    train = ParallelData.load(data, "train")
    batches = token_batches(train.src_lens, train.tgt_lens, max_tokens, shuffle=True, seed=seed, epoch=1)
    return [int(train.tgt_lens[b].sum()) + len(b) for b in batches[:n]]


def summary(updates: list[dict], warmup: int) -> dict:
    kept = [u for u in updates if u["update"] > warmup]
    tokens, seconds = sum(u["tokens"] for u in kept), sum(u["seconds"] for u in kept)
    return {"updates_kept": len(kept), "tokens_per_s": tokens / seconds, "s_per_update": seconds / len(kept),
            "tokens_per_update": tokens / len(kept), "per_update": updates}


# ------------------------------------------------------------------------------------ the table
def markdown(info: dict) -> str:
    def r(a, b):
        return f"{b / a:.2f}x" if a else "-"

    lines = [f"# a2d vs the authors' fairseq code (commit {info['peer_commit']}), CPU, fp32",
             "",
             f"{info['hardware']}; {info['threads']} threads (OMP_NUM_THREADS); {info['updates']} updates per run, "
             f"the first {info['warmup']} dropped; max_tokens {info['max_tokens']}; data `{info['data']}`; "
             f"a2d commit {info['a2d_commit']}; torch {info['torch']} on both sides; {info['date']}.",
             "",
             "| run | tokens/s fairseq | tokens/s a2d | a2d/fairseq | s/update fairseq | s/update a2d | a2d/fairseq "
             "| peak RSS fairseq | peak RSS a2d | a2d/fairseq |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in info["rows"].items():
        f, a = row["fairseq"], row["a2d"]
        lines.append(f"| {row['title']} | {f['tokens_per_s']:,.0f} | {a['tokens_per_s']:,.0f} | "
                     f"{r(f['tokens_per_s'], a['tokens_per_s'])} | {f['s_per_update']:.2f} | {a['s_per_update']:.2f} | "
                     f"{r(f['s_per_update'], a['s_per_update'])} | {f['peak_rss_mb']:,.0f} MB | "
                     f"{a['peak_rss_mb']:,.0f} MB | {r(f['peak_rss_mb'], a['peak_rss_mb'])} |")
    lines += ["", "Tokens are target tokens with `</s>`; tokens/s = kept tokens / kept seconds; peak RSS of the "
              "run's process (largest in its tree), start-up and saving included.", "",
              "| run | params fairseq | params a2d | target tokens/update fairseq | a2d | load avg before/after "
              "(fairseq; a2d) |", "|---|---|---|---|---|---|"]
    for name, row in info["rows"].items():
        f, a = row["fairseq"], row["a2d"]
        lines.append(f"| {row['title']} | {f['params'] or 0:,} | {a['params'] or 0:,} | {f['tokens_per_update']:,.0f} | "
                     f"{a['tokens_per_update']:,.0f} | {f['load_1min_before']:.1f}/{f['load_1min_after']:.1f}; "
                     f"{a['load_1min_before']:.1f}/{a['load_1min_after']:.1f} |")
    lines += ["", "fairseq's encoder has its own embedding table (their flags tie only the decoder's input and "
              "output embeddings); a2d's Marian models share one table for encoder, decoder and output. "
              "a2d's A2D parameter count is the student's, without the AAM. fairseq runs with its default one "
              "data-loader process.", "", "Commands:", ""]
    for name, row in info["rows"].items():
        lines += [f"- {row['title']}, fairseq: `{row['fairseq']['command']}`",
                  f"- {row['title']}, a2d: `{row['a2d']['command']}`"]
    lines += ["", f"Produced by `{info['command']}`.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="an a2d prepared data directory (a2d prepare)")
    ap.add_argument("--updates", type=int, default=10, help="updates per run (N)")
    ap.add_argument("--warmup", type=int, default=2, help="first updates of every run left out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "a2d" / "peer-fairseq-venv")
    ap.add_argument("--peer", type=Path, default=PEER, help="the snapshot of ncsoft/Align-to-Distill")
    ap.add_argument("--a2d", default=None, help="the a2d command (default: beside this Python, else on PATH)")
    ap.add_argument("--work", type=Path, default=None, help="folder for data, logs and checkpoints "
                    "(default: a temporary one, removed at the end)")
    ap.add_argument("--only", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to run")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "peer-fairseq-cpu",
                    help="path prefix of the .md and .json written")
    args = ap.parse_args()
    if args.updates <= args.warmup:
        sys.exit(f"--updates {args.updates} must be larger than --warmup {args.warmup}")
    a2d = args.a2d or (str(Path(sys.executable).parent / "a2d") if (Path(sys.executable).parent / "a2d").exists()
                       else shutil.which("a2d"))
    if not a2d:
        sys.exit("no a2d command: run with the a2d venv's Python or give --a2d")
    data = args.data.resolve()
    load_meta(data)
    bin_dir = ensure_venv(args.venv.expanduser(), args.peer)
    work = args.work or Path(tempfile.mkdtemp(prefix="a2d-peer-fairseq-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        fs_data = fairseq_data(data, work, bin_dir)
        n, mt = str(args.updates), str(args.max_tokens)
        bench = ["--cpu", "--max-update", n, "--log-format", "json", "--log-interval", "1", "--disable-validation",
                 "--no-epoch-checkpoints", "--seed", str(args.seed)]
        user_dir = str(args.peer / "custom")
        rows = {}
        teacher_ckpt = work / "fairseq-teacher" / "checkpoint_last.pt"
        for name in args.only:
            spec = ROWS[name]
            cmd = [str(bin_dir / "fairseq-train"), str(fs_data)]
            if name == "a2d":
                if not teacher_ckpt.exists():
                    sys.exit("the A2D row needs the teacher row (its checkpoint) in the same run")
                cmd += ["--alpha", "0.5", "--decay", "0.9"]
            cmd += ["--arch", spec["arch"], *THEIR_FLAGS]
            if name == "a2d":
                cmd += ["--teacher-checkpoint-path", str(teacher_ckpt), "--task", "kd_translation",
                        "--criterion", "kd_label_smoothed_cross_entropy"]
            else:
                cmd += ["--criterion", "label_smoothed_cross_entropy"]
            cmd += ["--label-smoothing", "0.1", "--max-tokens", mt, "--save-dir", str(work / f"fairseq-{name}"),
                    "--user-dir", user_dir, *bench] + ([] if name == "teacher" else ["--no-save"])
            res = run(cmd, work / f"fairseq-{name}.log", args.threads)
            updates, params = fairseq_updates(work / f"fairseq-{name}.log")
            rows[name] = {"title": spec["title"], "fairseq": {**res, **summary(updates, args.warmup), "params": params}}
        batch_tokens = a2d_batch_tokens(data, args.max_tokens, args.seed, args.updates)
        for name in args.only:
            spec = ROWS[name]
            out = work / f"a2d-{name}"
            cmd = [a2d, "distill" if name == "a2d" else "train", "--data", str(data)]
            if name == "a2d":
                cmd += ["--teacher", str(work / "a2d-teacher"), "--method", "a2d"]
            overrides = {**spec["sizes"], **COMMON_SIZES, "max_tokens": mt, "log_every": 1, "precision": "no"}
            if name == "a2d":
                overrides["teacher_precision"] = "fp32"
            cmd += ["--preset", spec["preset"], "--out", str(out), "--max-steps", n, "--seed", str(args.seed),
                    *(f"{k}={v}" for k, v in overrides.items())]
            res = run(cmd, work / f"a2d-{name}.log", args.threads)
            updates, params = a2d_updates(out, work / f"a2d-{name}.log", batch_tokens)
            rows[name]["a2d"] = {**res, **summary(updates, args.warmup), "params": params}
        freeze = subprocess.run([str(bin_dir / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        import torch

        info = {"peer_commit": PEER_COMMIT, "a2d_commit": git_commit(str(REPO)), "torch": torch.__version__,
                "hardware": f"{cpu} CPU, {os.cpu_count()} cores", "threads": args.threads,
                "updates": args.updates, "warmup": args.warmup, "max_tokens": args.max_tokens,
                "data": str(data), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "peer_venv": str(args.venv), "peer_patch_sha256": sha256(PATCH),
                "peer_pip_freeze": freeze.stdout.split(), "rows": rows}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), markdown(info))
    print(markdown(info))


if __name__ == "__main__":
    main()
