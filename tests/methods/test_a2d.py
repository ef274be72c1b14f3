"""AlignToDistill on tiny real models of mismatched shapes: AAM sizes, terms, gradients, frozen teacher, training."""
from __future__ import annotations

import json

import pytest
import torch

from a2d.losses import KIND_WEIGHTS, label_smoothed_ce, lambda_schedule
from a2d.methods import METHODS, Progress, get_method
from a2d.methods.a2d import A2DLayerwise, AlignToDistill
from a2d.models import build_model, use_attention_maps
from a2d.settings import load_config
from a2d.utils import UserError
from tests.methods.common import VOCAB, make_batch
from tests.methods.common import forward as plain_forward

# student 2 layers x 8 heads, d_model 64; teacher 3 layers x 4 heads, d_model 32
STUDENT = ["encoder_layers=2", "decoder_layers=2", "encoder_attention_heads=8", "decoder_attention_heads=8",
           "d_model=64", "ffn_dim=64", "dropout=0.0"]
TEACHER = ["encoder_layers=3", "decoder_layers=3", "encoder_attention_heads=4", "decoder_attention_heads=4",
           "d_model=32", "ffn_dim=64", "dropout=0.0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def forward(model, batch):
    return plain_forward(model, batch, output_attentions=True)


def make(overrides=(), method_cls=AlignToDistill):
    scfg = load_config("tiny-student", STUDENT + list(overrides))
    tcfg = load_config("tiny-teacher", TEACHER)
    student, teacher = build_model(scfg, VOCAB, seed=1), build_model(tcfg, VOCAB, seed=2)
    for m in (student, teacher):
        use_attention_maps(m)
    teacher.eval()
    method = method_cls(scfg.settings, student.config, teacher.config)
    return scfg, student, teacher, method


def test_registered():
    assert METHODS["a2d"] is AlignToDistill and METHODS["a2d-layerwise"] is A2DLayerwise
    assert get_method("a2d-layerwise").needs == frozenset({"logits", "attentions"})


def test_aam_sizes_mismatched_models_and_describe():
    _, student, teacher, method = make()
    assert set(method.aam) == {"enc_self", "dec_self", "dec_cross"}
    for kind in method.aam:
        assert (method.aam[kind].n_student, method.aam[kind].n_teacher) == (2 * 8, 3 * 4)
    desc = json.loads(json.dumps(method.describe()))
    assert desc["granularity"] == "head" and desc["aam"] == "convex"
    assert desc["kinds"]["dec_cross"] == {"n_student": 16, "n_teacher": 12, "student_layers": 2, "student_heads": 8,
                                          "teacher_layers": 3, "teacher_heads": 4, "student_maps_per_layer": 8,
                                          "teacher_maps_per_layer": 4, "state_key": "aam.dec_cross.logits"}
    w = method.alignment_weights()
    assert {k: tuple(v.shape) for k, v in w.items()} == {k: (16, 12) for k in method.aam}
    assert set(method.state_dict()) == {f"aam.{k}.logits" for k in method.aam}
    # only the AAM is trainable inside the method, nothing of the models
    assert sum(p.numel() for p in method.parameters()) == 3 * 16 * 12


def test_layerwise_sizes_are_layer_counts():
    _, student, teacher, method = make(method_cls=A2DLayerwise)
    assert method.granularity == "layer"
    assert all((m.n_student, m.n_teacher) == (2, 3) for m in method.aam.values())
    batch = make_batch()
    with torch.no_grad():
        terms = method.loss_terms(batch, forward(student, batch), forward(teacher, batch), Progress(1, 0))
    assert torch.isfinite(terms["att"])
    _, _, _, via_cfg = make(["att_granularity=layer"])
    assert via_cfg.describe()["kinds"]["enc_self"]["n_student"] == 2


@pytest.mark.parametrize("kinds", ["all", "enc-self", "dec-all", "dec-self", "dec-cross"])
def test_terms_and_weights(kinds):
    cfg, student, teacher, method = make([f"att_kinds={kinds}", "mu_kd=0.5", "lambda_att=2.0"])
    expected = set(KIND_WEIGHTS[kinds])
    assert set(method.aam) == expected
    batch = make_batch()
    s_out, t_out = forward(student, batch), forward(teacher, batch)
    terms = method.loss_terms(batch, s_out, t_out, Progress(epoch=3, update=10))
    assert set(terms) == {"att", "kd"} | {f"att_{k}" for k in expected}
    att = sum(KIND_WEIGHTS[kinds][k] * terms[f"att_{k}"] for k in expected)
    assert terms["att"].item() == pytest.approx(att.item(), rel=1e-6)
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in terms.values())
    w = method.weights(Progress(epoch=3, update=10))
    assert set(w) == set(terms)
    assert w["att"] == pytest.approx(lambda_schedule(2.0, cfg.settings.lambda_decay, "epoch", 3, 10)) == pytest.approx(2 * 0.81)
    assert w["kd"] == 0.5
    assert all(w[f"att_{k}"] == 0.0 for k in expected)


def test_reference_and_linear_modes_run():
    for overrides in (["kl_norm=reference"], ["aam=linear"], ["aam=linear", "kl_norm=reference"]):
        _, student, teacher, method = make(overrides)
        batch = make_batch()
        terms = method.loss_terms(batch, forward(student, batch), forward(teacher, batch), Progress(1, 0))
        assert torch.isfinite(terms["att"]) and terms["att"] > 0
        terms["att"].backward()
        assert all(p.grad is not None for p in method.parameters())
    assert set(method.state_dict()) == {f"aam.{k}.{p}" for k in method.aam for p in ("weight", "bias")}


def test_needs_a_teacher_and_valid_kinds():
    scfg = load_config("tiny-student", STUDENT)
    student = build_model(scfg, VOCAB, seed=1)
    with pytest.raises(UserError, match="teacher"):
        AlignToDistill(scfg.settings, student.config, None)


def test_gradients_reach_student_and_aam_not_teacher():
    _, student, teacher, method = make()
    student.train()
    batch = make_batch()
    # the teacher is deliberately left trainable and run with grad on: the method must detach its outputs
    t_out = forward(teacher, batch)
    s_out = forward(student, batch)
    terms = method.loss_terms(batch, s_out, t_out, Progress(1, 0))
    terms["att"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    enc_q = student.model.encoder.layers[0].self_attn.q_proj.weight.grad
    dec_k = student.model.decoder.layers[1].encoder_attn.k_proj.weight.grad
    assert enc_q is not None and enc_q.abs().sum() > 0 and dec_k is not None and dec_k.abs().sum() > 0


def test_training_lowers_att_and_keeps_teacher_identical():
    torch.manual_seed(0)
    _, student, teacher, method = make()
    teacher.requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    params = list(student.parameters()) + list(method.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    batch = make_batch(seed=3)
    student.train()
    atts = []
    for step in range(30):
        with torch.no_grad():
            t_out = forward(teacher, batch)
        s_out = forward(student, batch)
        progress = Progress(epoch=1, update=step)
        terms = method.loss_terms(batch, s_out, t_out, progress)
        weights = method.weights(progress)
        loss = label_smoothed_ce(s_out.logits, batch["labels"]) + sum(weights[k] * terms[k] for k in terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        atts.append(terms["att"].item())
    assert atts[-1] < 0.85 * atts[0], atts
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the AAM moved away from the uniform start
    assert any(m.logits.abs().max() > 1e-3 for m in method.aam.values())


@pytest.mark.parametrize("granularity", ["head", "layer"])
def test_identical_models_identity_aam_give_zero_loss(granularity):
    cfg = load_config("tiny-student", STUDENT + [f"att_granularity={granularity}"])
    student, teacher = build_model(cfg, VOCAB, seed=5), build_model(cfg, VOCAB, seed=5)
    for m in (student, teacher):
        use_attention_maps(m)
        m.eval()
    method = AlignToDistill(cfg.settings, student.config, teacher.config)
    with torch.no_grad():
        for aam in method.aam.values():
            aam.logits.copy_(torch.eye(aam.n_teacher) * 60.0)
    batch = make_batch(seed=7)
    terms = method.loss_terms(batch, forward(student, batch), forward(teacher, batch), Progress(1, 0))
    for name, value in terms.items():
        assert value.item() == pytest.approx(0.0, abs=1e-5), name
