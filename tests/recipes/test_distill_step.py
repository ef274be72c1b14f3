"""The distill step's switches: the authors' loss mixing, an fp32 teacher under mixed precision, and settings refused."""
from __future__ import annotations

import pytest
import torch

from a2d.data.batching import collate
from a2d.data.prepare import ParallelData
from a2d.methods import Progress, get_method
from a2d.models import build_model, use_attention_maps
from a2d.recipes.distill import distill_step
from a2d.settings import load_config
from a2d.utils import UserError
from tests.recipes.conftest import TINY


def setup(small_data, overrides=()):
    cfg = load_config("tiny-student", TINY + ["method=a2d", "dropout=0", *overrides])
    teacher_cfg = load_config("tiny-teacher", TINY + ["encoder_layers=3", "decoder_layers=3", "dropout=0"])
    data = ParallelData.load(small_data, "train")
    batch = collate([data[i] for i in range(6)])
    assert batch["labels"].eq(-100).any()  # the batch holds padding, so the two mixings differ
    student, teacher = build_model(cfg, 1000, seed=1), build_model(teacher_cfg, 1000, seed=2).eval()
    use_attention_maps(student)
    use_attention_maps(teacher)
    method = get_method("a2d")(cfg.settings, student.config, teacher.config)
    return cfg, student, teacher, method, batch


def test_reference_mixing_is_half_ce_half_kd_over_all_positions(small_data):
    progress = Progress(epoch=2, update=10, updates_per_epoch=50)
    cfg, student, teacher, method, batch = setup(small_data, ["kl_norm=reference", "aam=linear"])
    standard, w = distill_step(student, teacher, method, batch, cfg, progress)
    cfg_ref = load_config("tiny-student", TINY + ["method=a2d", "dropout=0", "kl_norm=reference", "aam=linear",
                                                  "loss_mixing=reference"])
    reference, w_ref = distill_step(student, teacher, method, batch, cfg_ref, progress)
    labels = batch["labels"]
    share = labels.ne(-100).sum().item() / labels.numel()
    # the terms are the same; only their mixing differs
    for k in ("ce", "kd", "att"):
        torch.testing.assert_close(standard[k], reference[k])
    lam = cfg.settings.lambda_att * cfg.settings.lambda_decay
    torch.testing.assert_close(standard["loss"], standard["ce"] + lam * standard["att"] + cfg.settings.mu_kd * standard["kd"])
    # the authors': (1-a)*CE + a*KD with a = 0.5, both means over all B*T positions; attention summed
    ce_all = standard["ce"] * labels.ne(-100).sum() / labels.numel()
    kd_all = standard["kd"] * labels.ne(-100).sum() / labels.numel()
    torch.testing.assert_close(reference["loss"], 0.5 * ce_all + 0.5 * kd_all + lam * standard["att"])
    assert w_ref["ce"] == pytest.approx(0.5 * share) and w["ce"] == 1.0
    preset = load_config("paper-student+a2d-paper")
    assert (preset.loss_mixing, preset.settings.kl_norm, preset.settings.aam) == ("reference", "reference", "linear")


@pytest.mark.parametrize("precision", ["same", "fp32"])
def test_teacher_precision_under_mixed_precision(precision, small_data, monkeypatch):
    """fp32: the KD targets are exactly the fp32 teacher's; same: they are computed under bf16 autocast."""
    cfg, student, teacher, method, batch = setup(small_data, [f"teacher_precision={precision}"])
    from a2d.training import model_inputs

    with torch.no_grad():
        full = teacher(**model_inputs(batch)).logits
    seen = {}
    real = method.loss_terms

    def spy(batch, student_out, teacher_out, progress):
        seen["teacher"] = teacher_out.logits
        return real(batch, student_out, teacher_out, progress)

    monkeypatch.setattr(method, "loss_terms", spy)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    terms, _ = distill_step(student, teacher, method, batch, cfg, Progress(1, 0, 10), autocast)
    assert torch.equal(seen["teacher"], full) == (precision == "fp32")
    assert terms["loss"].dtype == torch.float32  # loss arithmetic stays fp32


@pytest.mark.parametrize("method, refused", [("a2d", True), ("tinybert", True), ("minilm", True), ("kd", False)])
def test_attention_dropout_is_refused_where_maps_are_learned(method, refused, small_data):
    cfg = load_config("tiny-student", TINY + [f"method={method}", "attention_dropout=0.1"])
    student = build_model(cfg, 1000, seed=1)
    teacher = build_model(load_config("tiny-teacher", TINY), 1000, seed=2)
    if refused:
        with pytest.raises(UserError, match="attention_dropout=0.1.*set attention_dropout=0"):
            get_method(method)(cfg.settings, student.config, teacher.config)
    else:
        get_method(method)(cfg.settings, student.config, teacher.config)
