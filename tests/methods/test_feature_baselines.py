"""The feature baselines (tinybert, minilm, alp-kd, pkd, ckd) on tiny real models of different widths:
registry, terms and weights, gradients, training on a fixed batch, padding invariance, and one
property each (layer maps / groups, last layer only, attention over teacher layers)."""
from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import Seq2SeqLMOutput

from a2d.losses import label_smoothed_ce
from a2d.methods import METHODS, Progress
from a2d.methods.alp_kd import ALPKD, alp_fuse
from a2d.methods.ckd import CombinatorialKD, ckd_groups
from a2d.methods.minilm import MiniLM
from a2d.methods.pkd import PatientKD, normalised_distance, pkd_layer_map
from a2d.methods.tinybert import TinyBERT, attention_score_mse, tinybert_layer_map
from a2d.models import build_model, use_attention_maps
from a2d.settings import load_config
from a2d.utils import UserError
from tests.methods import common

VOCAB = common.VOCAB
# student 2+2 layers, d_model 32; teacher 4+4 layers, d_model 48; 4 heads each
STUDENT = ["encoder_layers=2", "decoder_layers=2", "encoder_attention_heads=4", "decoder_attention_heads=4",
           "d_model=32", "ffn_dim=64", "dropout=0.0"]
TEACHER = ["encoder_layers=4", "decoder_layers=4", "encoder_attention_heads=4", "decoder_attention_heads=4",
           "d_model=48", "ffn_dim=64", "dropout=0.0"]
NAMES = ("tinybert", "minilm", "alp-kd", "pkd", "ckd")
FEATURE_TERMS = {"tinybert": ("att", "hid"), "minilm": ("at", "vr"), "alp-kd": ("alp",), "pkd": ("pt",),
                 "ckd": ("ckd",)}
DECODER_TOO = ("tinybert", "minilm", "alp-kd")  # the others distil the encoder only
# method name + config overrides, for the tests that run every configuration
VARIANTS = [("tinybert", []), ("minilm", []), ("alp-kd", []), ("pkd", ["pkd_mapping=skip"]),
            ("pkd", ["pkd_mapping=last"]), ("ckd", ["ckd_grouping=sc"]), ("ckd", ["ckd_grouping=cc"]),
            ("ckd", ["ckd_grouping=rc"]), ("ckd", ["ckd_grouping=oc"])]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return common.make_batch(seed, pad=1)


def forward(model, batch):
    return common.forward(model, batch, output_attentions=True, output_hidden_states=True)


def make(name, overrides=(), teacher=TEACHER, student=STUDENT, seeds=(1, 2)):
    scfg = load_config("tiny-student", list(student) + [f"method={name}"] + list(overrides))
    tcfg = load_config("tiny-teacher", list(teacher))
    s_model, t_model = build_model(scfg, VOCAB, seed=seeds[0]), build_model(tcfg, VOCAB, seed=seeds[1])
    for m in (s_model, t_model):
        use_attention_maps(m)
    t_model.eval()
    method = METHODS[name](scfg.settings, s_model.config, t_model.config)
    if hasattr(method, "attach"):
        method.attach(s_model, t_model)
    return s_model, t_model, method


def replace(output, **fields) -> Seq2SeqLMOutput:
    """A copy of a model output with some fields replaced (a fake output for the loss functions)."""
    values = {k: getattr(output, k) for k in ("logits", "encoder_hidden_states", "decoder_hidden_states",
                                              "encoder_attentions", "decoder_attentions", "cross_attentions")}
    values.update(fields)
    return Seq2SeqLMOutput(**values)


def noise_like(x, seed):
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 10.0


ATTENTION_FIELDS = ("encoder_attentions", "decoder_attentions", "cross_attentions")


def noised(output, seeds: dict[tuple[str, int], int]) -> Seq2SeqLMOutput:
    """``output`` with each layer ``(field, index)`` of ``seeds`` replaced by noise of its seed
    (softmaxed over the keys for attention maps)."""
    fields = {}
    for (field, i), seed in seeds.items():
        layers = fields.setdefault(field, list(getattr(output, field)))
        noise = noise_like(layers[i], seed)
        layers[i] = torch.softmax(noise, dim=-1) if field in ATTENTION_FIELDS else noise
    return replace(output, **{field: tuple(layers) for field, layers in fields.items()})


def perturb_padding(output, batch, seed=0) -> Seq2SeqLMOutput:
    """Every padded position of every hidden state, and every attention cell a query may not use
    (padded query row, padded key, future key), replaced by large noise."""
    src, tgt = batch["attention_mask"].bool(), batch["decoder_attention_mask"].bool()
    t = tgt.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    valid = {"encoder_attentions": src[:, :, None] & src[:, None, :],
             "decoder_attentions": tgt[:, :, None] & tgt[:, None, :] & causal,
             "cross_attentions": tgt[:, :, None] & src[:, None, :]}
    fields, k = {}, seed
    for side, mask in (("encoder", src), ("decoder", tgt)):
        states = []
        for h in getattr(output, f"{side}_hidden_states"):
            k += 1
            states.append(torch.where(mask[:, :, None], h, noise_like(h, k)))
        fields[f"{side}_hidden_states"] = tuple(states)
    for field, ok in valid.items():
        maps = []
        for a in getattr(output, field):
            k += 1
            maps.append(torch.where(ok[:, None], a, noise_like(a, k).abs()))
        fields[field] = tuple(maps)
    return replace(output, **fields)


def feature_values(name, terms):
    return {k: terms[k].item() for k in FEATURE_TERMS[name]}


# --------------------------------------------------------------------------------------------------
CLASSES = {"tinybert": TinyBERT, "minilm": MiniLM, "alp-kd": ALPKD, "pkd": PatientKD, "ckd": CombinatorialKD}


@pytest.mark.parametrize("name", NAMES)
def test_registered_terms_and_weights(name):
    cls = METHODS[name]
    assert cls is CLASSES[name]
    assert cls.name == name and cls.summary and cls.paper and "\n" not in cls.summary
    assert {"logits", "hidden_states"} <= cls.needs
    assert ("attentions" in cls.needs) == (name in ("tinybert", "minilm"))
    s_model, t_model, method = make(name, ["mu_kd=0.5", "feature_weight=2.0"])
    batch = make_batch()
    with torch.no_grad():
        terms = method.loss_terms(batch, forward(s_model, batch), forward(t_model, batch), Progress(1, 0))
    w = method.weights(Progress(1, 0))
    assert set(w) == set(terms) and w["kd"] == 0.5
    for key in FEATURE_TERMS[name]:
        assert w[key] == 2.0 and terms[key].item() > 0
    assert all(v == 0.0 for k, v in w.items() if k not in FEATURE_TERMS[name] and k != "kd")  # logging only
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    assert "method" in method.describe()


@pytest.mark.parametrize("name", NAMES)
def test_needs_a_teacher(name):
    scfg = load_config("tiny-student", STUDENT)
    with pytest.raises(UserError, match="teacher"):
        METHODS[name](METHODS[name].Settings(), build_model(scfg, VOCAB, seed=1).config, None)


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[f"{n}{''.join(o)}" for n, o in VARIANTS])
def test_gradients_and_training_on_a_fixed_batch(name, overrides):
    torch.manual_seed(0)
    s_model, t_model, method = make(name, overrides)
    batch = make_batch(seed=3)
    params = [p for p in s_model.parameters() if p.requires_grad] + list(method.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    s_model.train()
    totals, features = [], []
    for step in range(20):
        # step 0: the teacher runs with gradients on, so the method must detach its outputs itself
        with torch.set_grad_enabled(step == 0):
            t_out = forward(t_model, batch)
        s_out = forward(s_model, batch)
        progress = Progress(epoch=1, update=step)
        terms, weights = method.loss_terms(batch, s_out, t_out, progress), method.weights(progress)
        loss = label_smoothed_ce(s_out.logits, batch["labels"]) + sum(weights[k] * terms[k] for k in terms)
        assert torch.isfinite(loss)
        opt.zero_grad()
        if step == 0:  # the feature terms alone reach the student's stacks they distil, and the method's modules
            feature = sum(weights[k] * terms[k] for k in FEATURE_TERMS[name])
            stacks = [s_model.model.encoder] + ([s_model.model.decoder] if name in DECODER_TOO else [])
            check = [stack.layers[0].fc1.weight for stack in stacks] + list(method.parameters())
            grads = torch.autograd.grad(feature, check, retain_graph=True)
            assert all(g.abs().sum() > 0 for g in grads)
        loss.backward()
        if step == 0:
            missing = [n for n, p in s_model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing, missing
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
            assert all(p.grad is None for p in t_model.parameters())
        opt.step()
        totals.append(loss.item())
        features.append(sum(terms[k].item() for k in FEATURE_TERMS[name]))
    assert totals[-1] < 0.8 * totals[0], totals
    assert features[-1] < features[0], features


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=[f"{n}{''.join(o)}" for n, o in VARIANTS])
def test_padding_never_counts(name, overrides):
    s_model, t_model, method = make(name, overrides)
    batch = make_batch(seed=5)
    assert not batch["attention_mask"].bool().all() and not batch["decoder_attention_mask"].bool().all()
    with torch.no_grad():
        s_out, t_out = forward(s_model, batch), forward(t_model, batch)
        clean = method.loss_terms(batch, s_out, t_out, Progress(1, 0))
        noisy = method.loss_terms(batch, perturb_padding(s_out, batch, 0), perturb_padding(t_out, batch, 100),
                                  Progress(1, 0))
    for key in FEATURE_TERMS[name]:
        assert noisy[key].item() == pytest.approx(clean[key].item(), rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("name", ["tinybert", "minilm"])
def test_identical_models_give_zero_feature_loss(name):
    s_model, t_model, method = make(name, teacher=STUDENT, seeds=(7, 7))
    s_model.eval()
    batch = make_batch(seed=2)
    with torch.no_grad():
        terms = method.loss_terms(batch, forward(s_model, batch), forward(t_model, batch), Progress(1, 0))
    for key in FEATURE_TERMS[name] + ("kd",):
        assert terms[key].item() == pytest.approx(0.0, abs=1e-5), key


# --------------------------------------------------------------------------------------------------
# TinyBERT


@pytest.mark.parametrize("name", ["tinybert", "minilm"])
def test_unequal_heads_are_a_one_line_user_error(name):
    scfg = load_config("tiny-student", STUDENT + ["encoder_attention_heads=8", "decoder_attention_heads=8"])
    tcfg = load_config("tiny-teacher", TEACHER)
    with pytest.raises(UserError) as info:
        METHODS[name](METHODS[name].Settings(), build_model(scfg, VOCAB, seed=1).config,
                      build_model(tcfg, VOCAB, seed=2).config)
    assert str(info.value) == f"{name} needs equal attention heads: student 8, teacher 4"


def test_tinybert_layer_map():
    assert tinybert_layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert tinybert_layer_map(2, 4) == [(1, 2), (2, 4)]
    assert tinybert_layer_map(6, 12) == [(i, 2 * i) for i in range(1, 7)]
    assert tinybert_layer_map(3, 4) == [(1, 2), (2, 3), (3, 4)]
    _, _, method = make("tinybert")
    assert method.layer_maps == {"encoder": [(1, 2), (2, 4)], "decoder": [(1, 2), (2, 4)]}
    # projections: student width 32 -> teacher width 48, embeddings + one per stack
    assert {k: (m.in_features, m.out_features) for k, m in method.proj.items()} == {
        "emb": (32, 48), "encoder": (32, 48), "decoder": (32, 48)}
    _, _, same = make("tinybert", teacher=STUDENT)
    assert torch.equal(same.proj["encoder"].weight, torch.eye(32))  # identity-initialised for equal widths


def test_tinybert_uses_only_the_mapped_teacher_layers():
    s_model, t_model, method = make("tinybert")
    batch = make_batch(seed=4)
    with torch.no_grad():
        s_out, t_out = forward(s_model, batch), forward(t_model, batch)
        base = method.loss_terms(batch, s_out, t_out, Progress(1, 0))

        def with_noise(hidden_idx, attn_idx):
            seeds = {(f"{side}_hidden_states", i): i for side in ("encoder", "decoder") for i in hidden_idx}
            seeds |= {(field, i): 10 + i for field in ATTENTION_FIELDS for i in attn_idx}
            return method.loss_terms(batch, s_out, noised(t_out, seeds), Progress(1, 0))

        unmapped = with_noise(hidden_idx=(1, 3), attn_idx=(0, 2))  # teacher layers 1 and 3
        mapped_hidden = with_noise(hidden_idx=(2,), attn_idx=())  # teacher layer 2 (<- student layer 1)
        mapped_embeddings = with_noise(hidden_idx=(0,), attn_idx=())
        mapped_attention = with_noise(hidden_idx=(), attn_idx=(3,))  # teacher layer 4 (<- student layer 2)
    for key in ("att", "hid"):
        assert unmapped[key].item() == pytest.approx(base[key].item(), rel=1e-6)
    assert mapped_hidden["hid"].item() != pytest.approx(base["hid"].item(), rel=1e-3)
    assert mapped_embeddings["hid"].item() != pytest.approx(base["hid"].item(), rel=1e-3)
    assert mapped_attention["att"].item() != pytest.approx(base["att"].item(), rel=1e-3)


def test_attention_score_mse_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    b, h, lq, lk = 2, 3, 4, 5
    s = torch.softmax(torch.randn(b, h, lq, lk, generator=g), -1)
    t = torch.softmax(torch.randn(b, h, lq, lk, generator=g), -1)
    qm = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    km = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)[:, None, :]
    total, rows = 0.0, 0
    for bi in range(b):
        for q in range(lq):
            if not qm[bi, q]:
                continue
            rows += 1
            keys = km[bi, 0].nonzero().flatten()
            per_head = [((s[bi, hi, q, keys].log() - t[bi, hi, q, keys].log()) ** 2).mean() for hi in range(h)]
            total += sum(per_head) / h
    assert attention_score_mse(s, t, qm, km).item() == pytest.approx(float(total) / rows, rel=1e-5)


# --------------------------------------------------------------------------------------------------
# MiniLM


def test_minilm_uses_only_the_last_layer():
    s_model, t_model, method = make("minilm")
    batch = make_batch(seed=6)
    with torch.no_grad():
        s_out, t_out = forward(s_model, batch), forward(t_model, batch)
        base = method.loss_terms(batch, s_out, t_out, Progress(1, 0))

        def earlier_layers_noised(out, seed):
            seeds = {}
            for side in ("encoder", "decoder"):  # all but the last layer's input
                n = len(getattr(out, f"{side}_hidden_states"))
                seeds |= {(f"{side}_hidden_states", i): seed + i for i in [*range(n - 2), n - 1]}
            for field in ATTENTION_FIELDS:
                seeds |= {(field, i): seed + 50 + i for i in range(len(getattr(out, field)) - 1)}
            # MiniLM has no cross-attention term: the last one too
            seeds[("cross_attentions", len(out.cross_attentions) - 1)] = seed + 99
            return noised(out, seeds)

        noisy = method.loss_terms(batch, earlier_layers_noised(s_out, 0), earlier_layers_noised(t_out, 200),
                                  Progress(1, 0))
        # the last layer's input does count (values are recomputed from it)
        states = list(t_out.encoder_hidden_states)
        states[-2] = noise_like(states[-2], 7)
        changed = method.loss_terms(batch, s_out, replace(t_out, encoder_hidden_states=tuple(states)), Progress(1, 0))
    for key in ("at", "vr"):
        assert noisy[key].item() == pytest.approx(base[key].item(), rel=1e-6), key
    assert changed["vr"].item() != pytest.approx(base["vr"].item(), rel=1e-3)
    assert changed["at"].item() == pytest.approx(base["at"].item(), rel=1e-6)


def test_minilm_value_relations_follow_the_attention_masks():
    s_model, t_model, method = make("minilm")
    batch = make_batch(seed=2)
    src, tgt = batch["attention_mask"].bool(), batch["decoder_attention_mask"].bool()
    with torch.no_grad():
        s_out, t_out = forward(s_model, batch), forward(t_model, batch)
        for role, out in (("student", s_out), ("teacher", t_out)):
            enc = method.value_relations(role, "encoder", out, batch)  # (B, H, S, S)
            dec = method.value_relations(role, "decoder", out, batch)  # (B, H, T, T)
            assert enc.shape[:2] == dec.shape[:2] == (4, 4)
            assert (enc * ~src[:, None, None, :]).abs().max() == 0  # padded keys
            assert torch.allclose(enc.sum(-1), torch.ones(enc.shape[:-1]), atol=1e-5)
            t = dec.shape[-1]
            future = ~torch.ones(t, t, dtype=torch.bool).tril()
            assert (dec * (future | ~tgt[:, None, :])[:, None]).abs().max() == 0  # future and padded keys
            assert torch.allclose(dec[..., 0, 0], torch.ones(4, 4))  # the first target token sees only itself


def test_minilm_needs_attach_and_has_no_parameters():
    scfg, tcfg = load_config("tiny-student", STUDENT), load_config("tiny-teacher", TEACHER)
    s_model, t_model = build_model(scfg, VOCAB, seed=1), build_model(tcfg, VOCAB, seed=2)
    for m in (s_model, t_model):
        use_attention_maps(m)
    method = MiniLM(MiniLM.Settings(), s_model.config, t_model.config)
    batch = make_batch()
    with torch.no_grad(), pytest.raises(RuntimeError, match="attach"):
        method.loss_terms(batch, forward(s_model, batch), forward(t_model, batch), Progress(1, 0))
    method.attach(s_model, t_model)
    assert list(method.parameters()) == [] and method.state_dict() == {}
    assert method._value_proj["student"]["decoder"] is s_model.model.decoder.layers[-1].self_attn.v_proj


# --------------------------------------------------------------------------------------------------
# ALP-KD


def test_alp_attention_over_teacher_layers_sums_to_one():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 10, 8, generator=g)
    fused, alpha = alp_fuse(torch.randn(10, 8, generator=g), teacher)
    assert alpha.shape == (10, 4) and torch.allclose(alpha.sum(-1), torch.ones(10)) and (alpha >= 0).all()
    assert torch.allclose(fused, torch.einsum("nk,knd->nd", alpha, teacher), atol=1e-6)
    # a student vector aligned with one (large) teacher layer puts its weight there
    fused, alpha = alp_fuse(teacher[2] * 10, teacher * torch.tensor([1.0, 1.0, 10.0, 1.0])[:, None, None])
    assert (alpha.argmax(-1) == 2).all()

    s_model, t_model, method = make("alp-kd")
    batch = make_batch(seed=1)
    with torch.no_grad():
        alphas = method.layer_attention(batch, forward(s_model, batch), forward(t_model, batch))
    n_src, n_tgt = int(batch["attention_mask"].sum()), int(batch["decoder_attention_mask"].sum())
    assert alphas["encoder"].shape == (2, n_src, 4) and alphas["decoder"].shape == (2, n_tgt, 4)
    for a in alphas.values():
        assert torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-6)
    assert set(dict(method.proj.named_children())) == {"encoder", "decoder"}


def test_alp_and_pkd_need_no_projection_for_equal_widths():
    for cls_name in ("alp-kd", "pkd"):
        _, _, method = make(cls_name, teacher=["d_model=32"] + TEACHER[:4])
        assert list(method.parameters()) == []


# --------------------------------------------------------------------------------------------------
# PKD


def test_pkd_layer_maps():
    assert pkd_layer_map(3, 6, "skip") == [(1, 2), (2, 4)]
    assert pkd_layer_map(3, 6, "last") == [(1, 4), (2, 5)]
    assert [t for _, t in pkd_layer_map(6, 12, "skip")] == [2, 4, 6, 8, 10]  # PKD-Skip, BERT12 -> BERT6
    assert [t for _, t in pkd_layer_map(6, 12, "last")] == [7, 8, 9, 10, 11]  # PKD-Last
    assert pkd_layer_map(2, 4, "skip") == [(1, 2)] and pkd_layer_map(2, 4, "last") == [(1, 3)]
    assert pkd_layer_map(1, 4, "skip") == [] == pkd_layer_map(1, 4, "last")
    with pytest.raises(UserError):
        pkd_layer_map(4, 2, "skip")
    for mapping, teacher_layer in (("skip", 2), ("last", 3)):
        s_model, t_model, method = make("pkd", [f"pkd_mapping={mapping}"])
        assert method.layer_map == [(1, teacher_layer)]
        batch = make_batch(seed=2)
        with torch.no_grad():
            s_out, t_out = forward(s_model, batch), forward(t_model, batch)
            base = method.loss_terms(batch, s_out, t_out, Progress(1, 0))["pt"].item()
            states = [noise_like(h, i) if i != teacher_layer else h for i, h in enumerate(t_out.encoder_hidden_states)]
            others = method.loss_terms(batch, s_out, replace(t_out, encoder_hidden_states=tuple(states)),
                                       Progress(1, 0))["pt"].item()
        assert others == pytest.approx(base, rel=1e-6)


def test_normalised_distance_is_scale_free():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert normalised_distance(a, a * 3.0).item() == pytest.approx(0.0, abs=1e-6)
    assert normalised_distance(a, -a).item() == pytest.approx(4.0, rel=1e-6)
    assert normalised_distance(a * 2, b * 5).item() == pytest.approx(normalised_distance(a, b).item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# CKD


def test_ckd_groups_tables():
    assert ckd_groups(3, 6, "sc") == [[1, 2], [3, 4], [5, 6]]
    assert ckd_groups(3, 6, "cc") == [[1, 4], [2, 5], [3, 6]]
    assert ckd_groups(3, 6, "rc") == [[3, 5], [1, 2], [4, 6]]
    assert ckd_groups(3, 6, "oc") == [[1, 2, 3], [3, 4, 5], [4, 5, 6]]
    assert ckd_groups(2, 4, "sc") == [[1, 2], [3, 4]]
    assert ckd_groups(2, 4, "cc") == [[1, 3], [2, 4]]
    assert ckd_groups(2, 4, "rc") == [[2, 3], [1, 4]]
    assert ckd_groups(2, 4, "oc") == [[1, 2, 3], [2, 3, 4]]
    assert ckd_groups(3, 7, "sc") == [[1, 2, 3], [4, 5], [6, 7]]
    for grouping in ("sc", "cc", "rc"):  # partitions: every teacher layer exactly once
        assert sorted(sum(ckd_groups(4, 12, grouping), [])) == list(range(1, 13))
    assert ckd_groups(3, 6, "rc") == ckd_groups(3, 6, "rc", seed=0)  # fixed
    with pytest.raises(UserError, match="ckd_grouping"):
        ckd_groups(2, 4, "xx")
    with pytest.raises(UserError, match="at least as many teacher layers"):
        ckd_groups(4, 2, "sc")


@pytest.mark.parametrize("grouping", ["sc", "cc", "rc", "oc"])
def test_ckd_fuses_the_documented_groups(grouping):
    s_model, t_model, method = make("ckd", [f"ckd_grouping={grouping}"])
    assert method.groups == ckd_groups(2, 4, grouping)
    assert [(p.in_features, p.out_features) for p in method.fuse] == [(len(g) * 48, 32) for g in method.groups]
    batch = make_batch(seed=3)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        t_out = forward(t_model, batch)
        fused = method.fused_teacher(t_out.encoder_hidden_states, mask)
        for group, proj, f in zip(method.groups, method.fuse, fused):
            concat = torch.cat([t_out.encoder_hidden_states[j] for j in group], dim=-1)[mask]
            assert torch.allclose(f, proj(concat), atol=1e-5)
