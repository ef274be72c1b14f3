"""A2D beyond translation (issue 38): a teacher and No-KD / KD / A2D students on a Multi30k stand-in task, scored on
test with paired significance tests (a2d.experiments.families).

    python benchmarks/families.py classification --runs RUNS --out benchmarks/results/families-classification
    python benchmarks/families.py lm --runs RUNS --out benchmarks/results/families-lm

Each step is an ``a2d`` command (printed, and recorded in the report); a finished run is kept, a started one resumed
(run it again after a kill). classification: the multi30k-pairs stand-in, a 6-layer BERT-style teacher
(classifier-teacher) and 3-layer students (classifier-student); lm: Multi30k's English side, a 6-layer GPT-2-style
teacher (lm-teacher) and 2-layer students (lm-student).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from a2d.cli import main as a2d
from a2d.experiments.families import family_report
from a2d.rundir import RunDir

SETUPS = {
    "classification": {"standin": "multi30k-pairs", "data": "pairs-data", "prefix": "cls",
                       "teacher": "classifier-teacher", "student": "classifier-student",
                       "title": "Encoder-only A2D (the paper's Table 6 setting) on the Multi30k pair-classification "
                                "stand-in: a 6-layer BERT-style teacher, 3-layer students"},
    "lm": {"standin": "multi30k-en", "data": "lm-data", "prefix": "lm", "teacher": "lm-teacher",
           "student": "lm-student",
           "title": "Decoder-only A2D (beyond the paper) on Multi30k's English side: a 6-layer GPT-2-style teacher, "
                    "2-layer students"},
}
PROMPTS = ["A man in a blue shirt", "Two dogs", "A group of people"]


def command(argv: list[str]) -> str:
    return "a2d " + " ".join(shlex.quote(str(a)) for a in argv)


def step(argv: list[str]) -> None:
    print(f"$ {command(argv)}", flush=True)
    if a2d([str(a) for a in argv]) != 0:
        sys.exit(f"failed: {command(argv)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=SETUPS)
    p.add_argument("--runs", required=True, help="folder for the data and run folders (outside the checkout)")
    p.add_argument("--out", required=True, help="report prefix: PREFIX.json, PREFIX.md")
    p.add_argument("--methods", nargs="+", default=["none", "kd", "a2d"])
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-epochs", type=int, default=5)
    p.add_argument("--lambda-att", default="0.1", help="A2D's lambda_att")
    p.add_argument("--note", default="", help="a line for the report (e.g. the commits the runs trained with)")
    p.add_argument("--report-only", action="store_true", help="score the runs there are; train nothing")
    args = p.parse_args(argv)
    setup, runs = SETUPS[args.task], Path(args.runs)
    data, teacher = runs / setup["data"], runs / f"{setup['prefix']}-teacher"
    students = {m: runs / f"{setup['prefix']}-{m}" for m in args.methods}
    plan = []  # (argv, whether it still has to run); the report records every command, the same as run here
    plan.append((["prepare-task", args.task, "--standin", setup["standin"], "--vocab-size", "8000", "--max-len", "128",
                  "--out", data], not data.is_dir()))
    plan.append((["train", "--data", data, "--preset", setup["teacher"], "--out", teacher,
                  f"max_epochs={args.teacher_epochs}", "save_every_minutes=10"], RunDir(teacher).status() != "finished"))
    for method, out in students.items():
        extra = [f"lambda_att={args.lambda_att}"] if method.startswith("a2d") else []
        plan.append((["distill", "--data", data, "--teacher", teacher, "--method", method, "--preset", setup["student"],
                      "--out", out, f"max_epochs={args.student_epochs}", "save_every_minutes=10", *extra],
                     RunDir(out).status() != "finished"))
    for argv, needed in plan:
        if needed and not args.report_only:
            out = Path(argv[argv.index("--out") + 1])
            step(argv + (["--resume"] if argv[0] != "prepare-task" and RunDir(out).status() != "new" else []))
    commands = [command([a if not isinstance(a, Path) else f"RUNS/{a.relative_to(runs)}" for a in argv])
                for argv, _ in plan]
    labels = {"none": "No KD", "kd": "KD", "a2d": "A2D", "tinybert": "TinyBERT", "minilm": "MiniLM", "pkd": "PKD"}
    systems = {"teacher": teacher, **{labels.get(m, m): out for m, out in students.items()}}
    systems = {k: v for k, v in systems.items() if RunDir(v).status() == "finished"}
    pairs = [("A2D", "No KD"), ("A2D", "KD"), ("KD", "No KD"), *[("A2D", labels[m]) for m in args.methods
                                                                 if m in ("tinybert", "minilm", "pkd")]]
    family_report(setup["title"], data, systems, pairs, Path(args.out),
                  commands=[f"python benchmarks/families.py {args.task} --runs RUNS --out {args.out} --teacher-epochs "
                            f"{args.teacher_epochs} --student-epochs {args.student_epochs}  # runs these:", *commands],
                  note=args.note,
                  prompts=PROMPTS if args.task == "lm" else ())
    print(f"wrote {args.out}.md and {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
