"""Hostile inputs and kill -9, run as a user would: every case through the real ``a2d`` command.

    A2D_DATA_DIR=../shared/data python benchmarks/hostile_inputs.py [--work /tmp/a2d-hostile] [--kills 6]

Each case runs ``a2d ...`` in a subprocess and is judged on what the user meets: a clean one-line
``a2d: error:`` (exit 2), a Python traceback, outputs left half-written, or a user's file lost. Then
training and A2D distillation are killed with SIGKILL at random points, resumed, and their final weights
compared with an uninterrupted run's, bit for bit. Prints the tally and writes it to
``benchmarks/results/hostile-inputs.md`` (with the commit and the machine).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from a2d.provenance import git_commit, hardware
from a2d.utils import atomic_write_text

TINY = ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1", "encoder_attention_heads=2",
        "decoder_attention_heads=2", "max_tokens=800", "log_every=1", "valid_max_sentences=20"]


def a2d(*args, stdin: bytes | None = None, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "a2d.cli", *map(str, args)], input=stdin, cwd=cwd, env=env,
                          capture_output=True, timeout=600)


def judge(proc: subprocess.CompletedProcess, expect_error: bool = True) -> str:
    err = proc.stderr.decode("utf-8", "replace").strip()
    if "Traceback" in err:
        return "traceback"
    if not expect_error:
        return "ok" if proc.returncode == 0 else "wrongly refused"
    if proc.returncode == 0:
        return "wrongly accepted"
    lines = [line for line in err.splitlines() if line.startswith("a2d: error:")]
    return "clean" if proc.returncode == 2 and len(lines) == 1 else "unclear"


def weights_hash(run: Path) -> str:
    return hashlib.sha256((run / "last" / "model.safetensors").read_bytes()).hexdigest()


def setup(work: Path) -> dict:
    data_root = Path(os.environ.get("A2D_DATA_DIR", "../shared/data")) / "multi30k"
    raw = work / "raw"
    raw.mkdir(parents=True)
    for split, name, n in (("tr", "train", 600), ("va", "val", 60)):
        for lang in ("de", "en"):
            with gzip.open(data_root / f"{name}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(n)]
            (raw / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    files = ["--train-src", raw / "tr.de", "--train-tgt", raw / "tr.en", "--valid-src", raw / "va.de",
             "--valid-tgt", raw / "va.en", "--test-src", raw / "va.de", "--test-tgt", raw / "va.en"]
    assert a2d("prepare", *files, "--vocab-size", "400", "--out", work / "data", cwd=work).returncode == 0
    assert a2d("train", "--data", work / "data", "--preset", "tiny-student", "--out", work / "run", "--max-steps",
               "6", *TINY, cwd=work).returncode == 0
    return {"files": files}


def cases(work: Path, files: list) -> list[tuple[str, callable]]:
    data, run = work / "data", work / "run"
    out = []

    def case(name):
        def wrap(fn):
            out.append((name, fn))
            return fn
        return wrap

    def copy(src: Path, name: str) -> Path:
        dst = work / name
        shutil.copytree(src, dst)
        return dst

    @case("prepare --out: a prepared folder holding the user's notes.txt")
    def _():
        d = copy(data, "data-notes")
        (d / "notes.txt").write_text("mine")
        proc = a2d("prepare", *files, "--vocab-size", "400", "--out", d, cwd=work)
        lost = not (d / "notes.txt").is_file()
        proc2 = a2d("prepare", *files, "--vocab-size", "400", "--out", d, "--overwrite", cwd=work)
        lost = lost or not (d / "notes.txt").is_file() or proc2.returncode != 0
        return "file lost" if lost else judge(proc)

    @case("evaluate --model: truncated model.safetensors")
    def _():
        m = copy(run / "best", "cut")
        blob = (m / "model.safetensors").read_bytes()
        (m / "model.safetensors").write_bytes(blob[: len(blob) // 2])
        return judge(a2d("evaluate", "--model", m, "--data", data, cwd=work))

    @case("distill --teacher: truncated model.safetensors")
    def _():
        res = judge(a2d("distill", "--data", data, "--teacher", work / "cut", "--preset", "tiny-student", "--out",
                        work / "d-cut", *TINY, cwd=work))
        return "partial output" if (work / "d-cut").exists() else res

    for cmd in ("evaluate", "translate"):
        @case(f"{cmd} --model: a folder with only a pickled pytorch_model.bin")
        def _(cmd=cmd):
            m = work / "pickled"
            if not m.exists():
                m = copy(run / "best", "pickled")
                (m / "model.safetensors").unlink()
                payload = ("import os, torch\nclass P:\n    def __reduce__(self):\n"
                           f"        return (os.system, ('touch {work}/PWNED',))\ntorch.save({{'x': P()}}, "
                           f"'{m}/pytorch_model.bin')\n")
                subprocess.run([sys.executable, "-c", payload], check=True)
            args = ["--model", m] + (["--data", data] if cmd == "evaluate" else [])
            res = judge(a2d(cmd, *args, stdin=b"Ein Hund.\n", cwd=work))
            return "payload ran" if (work / "PWNED").exists() else res

    def resume_case(name, damage):
        folder = f"resume-{len(out)}"

        @case(name)
        def _():
            r = copy(run, folder)
            damage(r)
            return judge(a2d("train", "--data", data, "--preset", "tiny-student", "--out", r, "--resume",
                             "--max-steps", "8", *TINY, cwd=work))

    def plant_pickle(r):
        payload = f"import os, torch\nclass P:\n    def __reduce__(self):\n        return (os.system, ('touch {work}/PWNED',))\ntorch.save({{'torch': P()}}, '{r}/last/trainer/rng.pt')\n"
        subprocess.run([sys.executable, "-c", payload], check=True)

    resume_case("--resume: a pickle planted as last/trainer/rng.pt", plant_pickle)
    resume_case("--resume: a corrupt state.json",
                lambda r: (r / "last/trainer/state.json").write_text('{"epoch": 1, "upd'))

    @case("--resume: an override that changes the model's shape (d_model=64)")
    def _():
        return judge(a2d("train", "--data", data, "--preset", "tiny-student", "--out", copy(run, "resume-shape"),
                         "--resume", *TINY, "d_model=64", cwd=work))

    @case("--resume: a half-written last line of metrics.jsonl (must be accepted)")
    def _():
        r = copy(run, "resume-metrics")
        with open(r / "metrics.jsonl", "a") as f:
            f.write('{"type": "train", "upd')
        return judge(a2d("train", "--data", data, "--preset", "tiny-student", "--out", r, "--resume",
                         "--max-steps", "8", *TINY, cwd=work), expect_error=False)

    @case("--resume: a data directory of another vocabulary")
    def _():
        other = work / "data-other"
        a2d("prepare", *files, "--vocab-size", "300", "--out", other, cwd=work)
        return judge(a2d("train", "--data", other, "--preset", "tiny-student", "--out", copy(run, "resume-vocab"),
                         "--resume", *TINY, cwd=work))

    @case("train --data: a split without src_offsets")
    def _():
        d = copy(data, "data-nokey")
        subprocess.run([sys.executable, "-c", "from safetensors.numpy import load_file, save_file\n"
                        f"a = load_file('{d}/train.safetensors'); del a['src_offsets']\n"
                        f"save_file(a, '{d}/train.safetensors')"], check=True)
        res = judge(a2d("train", "--data", d, "--preset", "tiny-student", "--out", work / "r-nokey", cwd=work))
        return "partial output" if (work / "r-nokey").exists() else res

    @case("evaluate: invalid UTF-8 in the test file")
    def _():
        d = copy(data, "data-utf8")
        with open(d / "test.de", "ab") as f:
            f.write(b"kaputt \xff\n")
        with open(d / "test.en", "a") as f:
            f.write("broken\n")
        return judge(a2d("evaluate", "--model", run, "--data", d, cwd=work))

    @case("translate: invalid UTF-8 on stdin")
    def _():
        return judge(a2d("translate", "--model", run, stdin=b"Ein Hund.\nkaputt \xff\n", cwd=work))

    for cmd in ("evaluate", "translate"):
        @case(f"{cmd} --beam 0")
        def _(cmd=cmd):
            args = ["--model", run, "--beam", "0"] + (["--data", data] if cmd == "evaluate" else [])
            return judge(a2d(cmd, *args, stdin=b"Ein Hund.\n", cwd=work))

    (work / "a-file").write_text("x")
    (work / "a-dir").mkdir()
    for what, target in (("a file", work / "a-file"), ("a directory", work / "a-dir")):
        for cmd, args in (("prepare", [*files, "--vocab-size", "400"]),
                          ("train", ["--data", data, "--preset", "tiny-student", *TINY]),
                          ("evaluate", ["--model", run, "--data", data]),
                          ("plot", [run])):
            if (cmd, what) in (("evaluate", "a file"), ("plot", "a file")):
                continue  # a file is what these write
            if (cmd, what) in (("prepare", "a directory"), ("train", "a directory")):
                continue  # an empty folder is a fine place for these
            @case(f"{cmd} --out: {what}")
            def _(cmd=cmd, args=args, target=target):
                before = sorted(p.name for p in work.iterdir())
                res = judge(a2d(cmd, *args, "--out", target, cwd=work))
                return "partial output" if sorted(p.name for p in work.iterdir()) != before else res

    for override, name in (("max_positions=12", "max_positions below the longest pair"),
                           ("max_tokens=20", "max_tokens below the longest pair")):
        @case(f"train: {name}")
        def _(override=override):
            r = work / f"r-{override.split('=')[0]}"
            res = judge(a2d("train", "--data", data, "--preset", "tiny-student", "--out", r, *TINY, override,
                            cwd=work))
            return "partial output" if r.exists() else res
    return out


def kill_resume(work: Path, kills: int, rng: random.Random) -> list[str]:
    """SIGKILL ``train`` and ``distill --method a2d`` at random moments; resume; compare with a straight run."""
    data = work / "data"
    results = []
    teacher = work / "run"
    for recipe, extra in (("train", []), ("distill", ["--teacher", teacher, "--method", "a2d"])):
        cmd = [recipe, "--data", data, "--preset", "tiny-student", *extra]
        settings = [*TINY, "max_steps=24", "save_every=3", "max_tokens=500"]
        straight = work / f"straight-{recipe}"
        assert a2d(*cmd, "--out", straight, *settings, cwd=work).returncode == 0
        for k in range(kills):
            run = work / f"killed-{recipe}-{k}"
            resume = []
            for attempt in range(2 if k % 2 else 1):  # some runs are killed twice in a row
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                proc = subprocess.Popen([sys.executable, "-m", "a2d.cli", *map(str, cmd), "--out", run, *resume,
                                         *settings], env=env, cwd=work, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(rng.uniform(2.0, 9.0))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                proc.wait()
                resume = ["--resume"]
            done = a2d(*cmd, "--out", run, "--resume", *settings, cwd=work)
            if done.returncode != 0:
                results.append(f"{recipe} #{k}: resume failed: {done.stderr.decode()[-300:]}")
                continue
            same = weights_hash(run) == weights_hash(straight)
            debris = [p.name for p in run.iterdir() if p.name.startswith(".")]
            results.append(f"{recipe} #{k}: {'identical' if same else 'DIFFERENT'} final weights"
                           + (f", debris {debris}" if debris else ""))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/a2d-hostile")
    parser.add_argument("--kills", type=int, default=3, help="killed runs per recipe")
    parser.add_argument("--out", default="benchmarks/results/hostile-inputs.md")
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.time()
    ctx = setup(work)
    rows = []
    for name, fn in cases(work, ctx["files"]):
        verdict = fn()
        rows.append((name, verdict))
        print(f"{verdict:<16} {name}", flush=True)
    kills = kill_resume(work, args.kills, random.Random(1))
    for line in kills:
        print(line, flush=True)
    tally = {}
    for _, verdict in rows:
        tally[verdict] = tally.get(verdict, 0) + 1
    lines = ["# Hostile inputs and kill -9", "",
             f"`python benchmarks/hostile_inputs.py --kills {args.kills}` at commit {git_commit()}, on {hardware()}, "
             f"{time.time() - start:.0f} s.", "",
             "Tally: " + ", ".join(f"{v} {k}" for k, v in sorted(tally.items())), "",
             "| case | verdict |", "|---|---|"]
    lines += [f"| {name} | {verdict} |" for name, verdict in rows]
    lines += ["", "## kill -9, then --resume", ""] + [f"- {line}" for line in kills]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines[:5]))
    bad = [v for _, v in rows if v not in ("clean", "ok")] + [k for k in kills if "identical" not in k or "debris" in k]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
