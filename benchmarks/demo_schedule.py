"""How long the demo's jobs take on two cores for a given way of sharing them, from their CPU seconds.

The demo (``a2d demo``) trains three students and scores four models. Each job's CPU seconds at one thread were
measured on a busy machine (docs/results.md, "The demo's schedule"); this replays the job list as the demo
runs it (``a2d.recipes.demo``: jobs start in list order when a slot is free and the job they need has
finished) with the running jobs sharing the cores equally, each at most one core, and prints when the last
one ends for each order and number of jobs at a time:

    python benchmarks/demo_schedule.py
    python benchmarks/demo_schedule.py --cpu student-nokd=140 student-kd=230   # other measurements
"""
from __future__ import annotations

import argparse

#: CPU seconds at one thread (docs/results.md, "The demo's schedule").
MEASURED = {"student-a2d": 270.0, "student-kd": 250.0, "student-nokd": 152.0, "evaluate-teacher": 34.0,
            "evaluate-student-nokd": 33.0, "evaluate-student-kd": 30.0, "evaluate-student-a2d": 27.0}
EVALUATIONS = ["evaluate-teacher", "evaluate-student-nokd", "evaluate-student-kd", "evaluate-student-a2d"]


def makespan(cpu: dict[str, float], order: list[str], slots: int, cores: int = 2) -> float:
    """Seconds until the last job of ``order`` ends, ``slots`` jobs at a time on ``cores`` cores."""
    after = {f"evaluate-{name}": name for name in cpu if name.startswith("student-")}
    left, now, running, done, pending = dict(cpu), 0.0, [], set(), list(order)
    while pending or running:
        for job in list(pending):
            if len(running) >= slots:
                break
            if after.get(job) in order and after[job] not in done:
                continue
            pending.remove(job)
            running.append(job)
        rate = min(1.0, cores / len(running))
        step = min(left[job] for job in running) / rate
        now += step
        for job in list(running):
            left[job] -= step * rate
            if left[job] <= 1e-9:
                running.remove(job)
                done.add(job)
    return now


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", nargs="*", default=[], metavar="JOB=SECONDS", help="replace measured CPU seconds")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    cpu = dict(MEASURED)
    for item in args.cpu:
        job, _, seconds = item.partition("=")
        if job not in cpu:
            parser.error(f"--cpu {item}: no job {job!r} (one of {', '.join(cpu)})")
        cpu[job] = float(seconds)
    print(f"{sum(cpu.values()):.0f} CPU seconds: at least {sum(cpu.values()) / args.cores:.0f} s on {args.cores} cores")
    orders = {"A2D, KD, No KD": ["student-a2d", "student-kd", "student-nokd"],
              "A2D, No KD, KD": ["student-a2d", "student-nokd", "student-kd"],
              "No KD, KD, A2D": ["student-nokd", "student-kd", "student-a2d"]}
    for name, students in orders.items():
        ends = {slots: makespan(cpu, students + EVALUATIONS, slots, args.cores) for slots in (1, 2, 3)}
        print(f"students {name}: " + ", ".join(f"{slots} at a time {end:.0f} s" for slots, end in ends.items()))


if __name__ == "__main__":
    main()
