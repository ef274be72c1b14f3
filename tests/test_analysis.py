"""Figure 2 analysis: the AAM heatmap PNG and the summary numbers for hand-set weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from a2d.analysis import format_summary, plot_alignment, summarize_weights
from a2d.methods.a2d import AlignToDistill
from a2d.models import marian_config
from a2d.settings import load_config
from a2d.utils import UserError


def write_run(run_dir, overrides=(), set_weights=None):
    """A run folder as the distill recipe writes it: method.json (describe) + method.safetensors (state_dict)."""
    scfg = load_config("tiny-student", ["encoder_layers=2", "decoder_layers=2", "encoder_attention_heads=2",
                                        "decoder_attention_heads=2", "d_model=32", *overrides])
    tcfg = load_config("tiny-teacher", ["encoder_layers=1", "decoder_layers=1", "d_model=32"])
    method = AlignToDistill(scfg.settings, marian_config(scfg, 50), marian_config(tcfg, 50))
    if set_weights:
        set_weights(method)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "method.json").write_text(json.dumps(method.describe()))
    save_file({k: v.contiguous() for k, v in method.state_dict().items()}, str(run_dir / "method.safetensors"))
    return method


def test_summary_numbers_for_hand_set_convex_weights(tmp_path):
    # 4 student maps (2 layers x 2 heads) -> 4 teacher maps (1 layer x 4 heads)
    def set_weights(method):
        with torch.no_grad():
            for m in method.aam.values():
                m.logits.zero_()  # teacher maps 2, 3: uniform over the 4 student maps
                m.logits[0, 0] = 60.0  # teacher map 0 <- student map 0 only
                m.logits[1, 3] = 60.0  # teacher map 1 <- student map 3 only

    method = write_run(tmp_path / "run", set_weights=set_weights)
    out = tmp_path / "figs" / "aam.png"
    summary = plot_alignment(tmp_path / "run", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["aam.png"]  # no temp file left behind
    assert set(summary["kinds"]) == {"enc_self", "dec_self", "dec_cross"}
    for kind, s in summary["kinds"].items():
        assert (s["n_student"], s["n_teacher"]) == (4, 4)
        assert s["share_small"] == pytest.approx(6 / 16)  # 3 zeros in each one-hot column
        assert s["mean_abs"] == pytest.approx(4 / 16, abs=1e-6)  # every column sums to 1
        assert s["mean_entropy"] == pytest.approx(2 * math.log(4) / 4, abs=1e-6)
        assert s["mean_entropy_norm"] == pytest.approx(0.5, abs=1e-6)
        np.testing.assert_allclose(method.alignment_weights()[kind].numpy()[:, 0], [1, 0, 0, 0], atol=1e-6)
    text = format_summary(summary)
    assert "enc_self" in text and "dec_cross" in text and "37.5%" in text


def test_summarize_linear_weights_with_signs():
    w = np.array([[0.5, -0.02], [-0.5, 0.04], [0.0, 0.0]])
    s = summarize_weights(w)
    assert s["share_small"] == pytest.approx(4 / 6)
    assert s["mean_abs"] == pytest.approx(1.06 / 6)
    ent = -(2 * 0.5 * math.log(0.5)) + -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    assert s["mean_entropy"] == pytest.approx(ent / 2)


def test_plot_linear_and_layerwise_runs(tmp_path):
    write_run(tmp_path / "lin", ["aam=linear"])
    summary = plot_alignment(tmp_path / "lin", tmp_path / "lin.png")
    assert summary["aam"] == "linear" and (tmp_path / "lin.png").stat().st_size > 0
    write_run(tmp_path / "lay", ["att_granularity=layer", "att_kinds=dec-all"])
    summary = plot_alignment(tmp_path / "lay", tmp_path / "lay.png")
    assert set(summary["kinds"]) == {"dec_self", "dec_cross"}
    assert summary["kinds"]["dec_self"]["n_student"] == 2 and summary["kinds"]["dec_self"]["n_teacher"] == 1


def test_missing_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="method.json and .*method.safetensors"):
        plot_alignment(tmp_path, tmp_path / "x.png")
    write_run(tmp_path / "run")
    (tmp_path / "run" / "method.safetensors").unlink()
    with pytest.raises(UserError, match="method.safetensors"):
        plot_alignment(tmp_path / "run", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_run_last_is_the_aam_of_the_last_checkpoint(tmp_path):
    """RUN/last: the run's method.json, the AAM saved with last/ (last/trainer/method.safetensors), not best's."""
    def one_hot(method):
        with torch.no_grad():
            for m in method.aam.values():
                m.logits.zero_()
                m.logits[:, 0] = 60.0  # every teacher map <- student map 0

    write_run(tmp_path / "run")  # best's AAM: uniform
    last = write_run(tmp_path / "scratch", set_weights=one_hot)
    (tmp_path / "run" / "last" / "trainer").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in last.state_dict().items()},
              str(tmp_path / "run" / "last" / "trainer" / "method.safetensors"))
    best = plot_alignment(tmp_path / "run", tmp_path / "best.png")
    at_last = plot_alignment(tmp_path / "run" / "last", tmp_path / "last.png")
    assert all(s["mean_entropy_norm"] == pytest.approx(1.0) for s in best["kinds"].values())
    assert all(s["mean_entropy_norm"] == pytest.approx(0.0, abs=1e-6) for s in at_last["kinds"].values())
    (tmp_path / "run" / "last" / "trainer" / "method.safetensors").unlink()
    with pytest.raises(UserError, match="last/trainer/method.safetensors"):
        plot_alignment(tmp_path / "run" / "last", tmp_path / "x.png")
