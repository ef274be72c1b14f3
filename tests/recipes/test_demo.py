"""The demo: its teacher (carried by the package, checked by SHA-256, or downloaded into the user cache), what it
runs and scores, how its jobs share the cores, what it says."""
from __future__ import annotations

import shutil
import sys
import time

import pytest

from a2d.cli import main
from a2d.recipes import demo as demo_module
from a2d.utils import UserError, sha256_file


def test_the_packaged_teacher_is_the_stored_tiny_r3_teacher():
    folder = demo_module.demo_teacher()
    assert folder == demo_module.PACKAGED_TEACHER
    for name, digest in demo_module.TEACHER_FILES.items():
        assert sha256_file(folder / name) == digest, name


def test_without_the_packaged_teacher_it_is_downloaded_and_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_module, "PACKAGED_TEACHER", tmp_path / "not-installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(demo_module.TEACHER_URL_VARIABLE, raising=False)
    with pytest.raises(UserError, match="A2D_DEMO_TEACHER_URL.*--train-teacher"):
        demo_module.demo_teacher()
    source = demo_module.Path(demo_module.__file__).resolve().parents[1] / "assets" / "demo-teacher"
    monkeypatch.setenv(demo_module.TEACHER_URL_VARIABLE, source.resolve().as_uri())
    folder = demo_module.demo_teacher(log=lambda *a: None)
    assert folder == tmp_path / "cache" / "a2d" / "demo-teacher"
    assert all(sha256_file(folder / n) == h for n, h in demo_module.TEACHER_FILES.items())
    # a server that hands out other bytes is refused, and nothing of it is kept
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in demo_module.TEACHER_FILES:
        (bad / name).write_bytes(b"not it")
    (folder / "model.safetensors").unlink()
    monkeypatch.setenv(demo_module.TEACHER_URL_VARIABLE, bad.as_uri())
    with pytest.raises(UserError, match="SHA-256 differs"):
        demo_module.demo_teacher(log=lambda *a: None)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture
def no_teacher(tmp_path, monkeypatch):
    """An installation without the packaged teacher and an empty user cache."""
    monkeypatch.setattr(demo_module, "PACKAGED_TEACHER", tmp_path / "not-installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(demo_module.TEACHER_URL_VARIABLE, raising=False)
    return tmp_path / "cache" / "a2d" / "demo-teacher"


def test_the_teacher_url_may_be_a_plain_path(no_teacher, tmp_path, monkeypatch):
    source = demo_module.Path(demo_module.__file__).resolve().parents[1] / "assets" / "demo-teacher"
    monkeypatch.setenv(demo_module.TEACHER_URL_VARIABLE, str(source.resolve()))
    assert demo_module.demo_teacher(log=lambda *a: None) == no_teacher
    assert all(sha256_file(no_teacher / n) == h for n, h in demo_module.TEACHER_FILES.items())
    shutil.rmtree(no_teacher)
    monkeypatch.chdir(source.parent)  # a relative path too
    monkeypatch.setenv(demo_module.TEACHER_URL_VARIABLE, "demo-teacher/")
    assert demo_module.demo_teacher(log=lambda *a: None) == no_teacher


@pytest.mark.parametrize("url, message", [
    ("/no/such/folder", "A2D_DEMO_TEACHER_URL=/no/such/folder: no such folder"),
    ("ftp://example.org/teacher", "use an http\\(s\\):// or file:// address, or a folder's path"),
    ("http://", "config.json: cannot download \\(no host given\\)"),
    ("http://[::1/teacher", "A2D_DEMO_TEACHER_URL=http://\\[::1/teacher: not an address"),
    ("file:///no/such/folder", "file:///no/such/folder/config.json: cannot download"),
])
def test_a_failed_teacher_fetch_is_one_line_and_leaves_no_folders(url, message, no_teacher, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setenv(demo_module.TEACHER_URL_VARIABLE, url)
    with pytest.raises(UserError, match=message):
        demo_module.demo_teacher(log=lambda *a: None)
    assert not (tmp_path / "cache").exists()  # no empty cache folder left behind
    out = tmp_path / "work" / "demo"
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("a2d: error:") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()  # nor an empty --out


def test_no_teacher_url_leaves_no_out_folder(no_teacher, tmp_path):
    with pytest.raises(UserError, match="A2D_DEMO_TEACHER_URL"):
        demo_module.demo(tmp_path / "demo", log=lambda *a: None)
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps 0: must be at least 1"),
                                           (["--out", "FILE"], "exists and is not a folder")])
def test_demo_arguments_are_checked_first(argv, message, tmp_path, capsys):
    (tmp_path / "FILE").write_text("mine")
    argv = [str(tmp_path / a) if a == "FILE" else a for a in argv]
    assert main(["demo", *argv] + ([] if "--out" in argv else ["--out", str(tmp_path / "demo")])) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "FILE").read_text() == "mine" and not (tmp_path / "demo").exists()


def test_the_plan_scores_each_student_at_its_budgets_last_checkpoint(tmp_path):
    out, data, teacher = tmp_path / "demo", tmp_path / "demo" / "data", tmp_path / "teacher"
    jobs = demo_module.plan_jobs(out, data, teacher, steps=123, seed=4)
    names = [job.name for job in jobs]
    assert names == ["student-a2d", "student-kd", "student-nokd", "evaluate-teacher", "evaluate-student-nokd",
                     "evaluate-student-kd", "evaluate-student-a2d"]
    by_name = {job.name: job for job in jobs}
    for name, method in demo_module.STUDENTS:
        cmd = by_name[name].cmd
        assert cmd[cmd.index("--max-steps") + 1] == "123" and cmd[cmd.index("--seed") + 1] == "4"
        assert cmd[3] == ("train" if method == "none" else "distill")
        assert ("--method" not in cmd) if method == "none" else cmd[cmd.index("--method") + 1] == method
        assert (f"aam_lr={demo_module.DEMO_AAM_LR}" in cmd) == (method == "a2d")
        scored = by_name[f"evaluate-{name}"]
        assert scored.after == name and scored.cmd[scored.cmd.index("--model") + 1] == str(out / name / "last")
    assert by_name["evaluate-teacher"].cmd[by_name["evaluate-teacher"].cmd.index("--model") + 1] == str(teacher)
    # what is done is not done again
    (out / "test-teacher.json").parent.mkdir(parents=True)
    (out / "test-teacher.json").write_text("{}")
    assert "evaluate-teacher" not in [job.name for job in demo_module.plan_jobs(out, data, teacher, 123, 4)]


def test_jobs_share_the_slots_in_order_and_wait_for_what_they_need(tmp_path):
    def job(name, seconds, after=None):
        code = (f"import time, pathlib; p = pathlib.Path({str(tmp_path)!r}); (p / '{name}.start').write_text("
                f"str(time.time())); time.sleep({seconds}); (p / '{name}.end').write_text(str(time.time()))")
        return demo_module._Job(name, [sys.executable, "-c", code], after)

    jobs = [job("long", 1.5), job("short", 0.2), job("after-short", 0.2, "short"), job("after-long", 0.2, "long")]
    done = demo_module._run_jobs(jobs, tmp_path, slots=2, threads=1, log=lambda *a: None)
    assert set(done) == {"long", "short", "after-short", "after-long"}
    assert all(d["cpu_seconds"] >= 0 and d["wall_seconds"] > 0 for d in done.values())
    t = {p.name: float(p.read_text()) for p in tmp_path.iterdir() if p.suffix in (".start", ".end")}
    assert t["after-short.start"] >= t["short.end"] and t["after-long.start"] >= t["long.end"]
    assert t["after-short.start"] < t["long.end"]  # the freed slot is used at once
    intervals = [(t[f"{n}.start"], t[f"{n}.end"]) for n in done]
    assert max(sum(a <= s < b for a, b in intervals) for s, _ in intervals) <= 2  # never more than 2 at a time
    assert (tmp_path / "long.log").exists()


def test_a_failed_job_stops_the_others_and_names_its_log(tmp_path):
    slow = demo_module._Job("slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    bad = demo_module._Job("bad", [sys.executable, "-c", "import sys; print('a2d: error: it broke'); sys.exit(2)"])
    never = demo_module._Job("never", [sys.executable, "-c", "pass"], after="bad")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"bad failed \(a2d: error: it broke\); see .*bad.log"):
        demo_module._run_jobs([slow, bad, never], tmp_path, slots=2, threads=1, log=lambda *a: None)
    assert time.perf_counter() - start < 30  # the slow one was stopped, not waited for
    assert not (tmp_path / "never.log").exists()


def _test(delta, p):
    return {"delta": delta, "p_value": p}


def test_the_output_says_plainly_when_a2d_is_not_ahead_of_kd():
    ahead = demo_module.comparison_lines({"a2d_vs_nokd": _test(4.4, 0.001), "a2d_vs_kd": _test(1.2, 0.01)})
    assert ahead == ["A2D student vs No-KD student: +4.40 BLEU, paired bootstrap p = 0.001 (A2D is ahead of No-KD, "
                     "significantly).",
                     "A2D student vs KD student: +1.20 BLEU, paired bootstrap p = 0.010 (A2D is ahead of KD, "
                     "significantly)."]
    level = demo_module.comparison_lines({"a2d_vs_nokd": _test(4.4, 0.001), "a2d_vs_kd": _test(0.3, 0.2)})
    assert "(A2D is ahead of KD, but not significantly)" in level[1] and len(level) == 2
    behind = demo_module.comparison_lines({"a2d_vs_nokd": _test(2.0, 0.001), "a2d_vs_kd": _test(-0.8, 0.03)})
    assert "A2D is not ahead of KD; KD is significantly ahead" in behind[1]
    assert behind[2].startswith("A2D is not ahead of plain word-level KD in this run")
    tiny = demo_module.comparison_lines({"a2d_vs_nokd": _test(0.004, 0.001), "a2d_vs_kd": _test(-0.003, 0.005)})
    assert tiny[0].endswith("+0.00 BLEU, paired bootstrap p = 0.001 (no difference from No-KD at this precision).")
    assert "(no difference from KD at this precision)" in tiny[1] and len(tiny) == 3


def test_two_cores_run_the_three_students_at_once_one_thread_each(monkeypatch):
    monkeypatch.setattr(demo_module, "cores", lambda: 2)
    assert demo_module.lanes(True) == (3, 1) and demo_module.lanes(False) == (1, 2)
    monkeypatch.setattr(demo_module, "cores", lambda: 1)
    assert demo_module.lanes(True) == (1, 1)
    monkeypatch.setattr(demo_module, "cores", lambda: 8)
    assert demo_module.lanes(True) == (3, 2)
