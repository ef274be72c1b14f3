"""The demo's teacher: carried by the package (checked by SHA-256), or downloaded into the user cache."""
from __future__ import annotations

import pytest

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
