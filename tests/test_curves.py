"""a2d.curves: metrics.jsonl reading and the training-curve PNG."""
from __future__ import annotations

import json

import pytest

from a2d.curves import plot_training_curves, read_metrics
from a2d.utils import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fake_run(folder, scale: float, valid: bool = True):
    folder.mkdir(parents=True)
    lines = []
    for update in range(10, 210, 10):
        lines.append({"type": "train", "update": update, "epoch": 1 + update // 100, "loss": scale * 8 / update ** 0.3,
                      "ce": scale * 7 / update ** 0.3, "lr": 1e-4, "tokens_per_s": 1234.5})
        if valid and update % 50 == 0:
            lines.append({"type": "valid", "update": update, "epoch": 1 + update // 100,
                          "valid_loss": scale * 6 / update ** 0.3, "valid_bleu": update / 10 / scale})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return folder


def test_plot_two_runs_writes_png(tmp_path):
    a = _fake_run(tmp_path / "runs" / "teacher", 1.0)
    b = _fake_run(tmp_path / "runs" / "student", 1.3)
    out = tmp_path / "plots" / "curves.png"
    plot_training_curves([a, b], out)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary file left behind
    plot_training_curves([a, b], out, log_y=True)  # overwrites in place
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_run_without_validation(tmp_path):
    run = _fake_run(tmp_path / "early", 1.0, valid=False)
    out = tmp_path / "early.png"
    plot_training_curves([run], out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_read_metrics_skips_blank_lines(tmp_path):
    run = _fake_run(tmp_path / "r", 1.0)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write("\n")
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 24 and records[0]["type"] == "train"
    assert read_metrics(run) == records  # a run folder works too


def test_malformed_line_names_file_and_line(tmp_path):
    run = _fake_run(tmp_path / "bad", 1.0)
    path = run / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"type": "train", "update": 30, "loss": '
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:3\b"):
        read_metrics(path)
    out = tmp_path / "bad.png"
    with pytest.raises(UserError, match=rf"{path}:3\b"):
        plot_training_curves([run], out)
    assert not out.exists()
    path.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:1\b"):
        read_metrics(path)


def test_missing_metrics_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="metrics.jsonl"):
        plot_training_curves([tmp_path / "empty"], tmp_path / "x.png")
    with pytest.raises(UserError):
        plot_training_curves([], tmp_path / "x.png")


def test_other_families_plot_their_validation_score(tmp_path):
    from a2d.curves import score_key

    runs = []
    for name, record in (("cls", {"valid_accuracy": 70.0, "valid_f1": 69.0, "valid_mcc": 40.0, "valid_score": 70.0}),
                         ("lm", {"valid_loss": 3.6, "valid_perplexity": 36.6, "valid_score": -36.6})):
        run = tmp_path / name
        run.mkdir()
        lines = [{"type": "train", "update": 10, "epoch": 1, "loss": 1.0},
                 {"type": "valid", "update": 10, "epoch": 1, **record}]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        runs.append(run)
    assert score_key(read_metrics(runs[0])) == "valid_accuracy"
    assert score_key(read_metrics(runs[1])) == "valid_perplexity"
    plot_training_curves(runs, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
