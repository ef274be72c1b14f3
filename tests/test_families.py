"""Model families (a2d.families): the methods read BERT classifiers and causal LMs as they read Marian models.

A2D's loss on a BERT-style and on a GPT-style teacher/student pair (other layers, heads and width) is checked against
a direct computation from the models' own attention outputs; the refusals are one line."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig, \
    LlamaForCausalLM

from a2d.families import FAMILIES, shape_of
from a2d.methods import METHODS, Progress
from a2d.settings import load_config
from a2d.utils import UserError

V = 50


def bert(layers, heads, width, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=V, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * width, max_position_embeddings=32, num_labels=2,
                        attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0, attn_implementation="eager",
                        initializer_range=0.3)  # peaked maps: KLs well above float rounding
    return BertForSequenceClassification(config).eval()


def gpt2(layers, heads, width, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=V, n_embd=width, n_layer=layers, n_head=heads, n_positions=32, attn_pdrop=0.0,
                        resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=1, attn_implementation="eager",
                        initializer_range=0.3)
    return GPT2LMHeadModel(config).eval()


def llama(layers, heads, width, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=V, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=32,
                         pad_token_id=1, attn_implementation="eager", initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def method(name, student, teacher, *overrides):
    cfg = load_config(None, [f"method={name}", *overrides])
    built = METHODS[name](cfg.settings, student.config, teacher.config)
    built.attach(student, teacher)
    return built


def padded_batch(causal: bool):
    """Two sequences, the second with 2 padded positions at its end."""
    ids = torch.randint(3, V, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if causal:
        labels = torch.full_like(ids, -100)
        labels[:, :-1] = ids[:, 1:]
        labels[:, :-1][mask[:, 1:] == 0] = -100
        batch["labels"] = labels
    else:
        batch["labels"] = torch.tensor([0, 1])
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


def direct_a2d(aam_logits: torch.Tensor, s_att, t_att, mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """Eq. 9-10 written out from the models' attention tuples: every student head mixed by softmax(logits) into one map
    per teacher head, KL(teacher row || mixed row) over the keys a query may see, summed, over the real queries."""
    s = torch.cat([a.double() for a in s_att], dim=1)  # (B, N_S*M_S, L, L), layer-major
    t = torch.cat([a.double() for a in t_att], dim=1)
    w = torch.softmax(aam_logits.double(), dim=-1)  # (teacher maps, student maps)
    total, queries = 0.0, 0
    b, _, length, _ = s.shape
    for i in range(b):
        real = int(mask[i].sum())
        for q in range(real):
            keys = q + 1 if causal else real
            queries += 1
            for c in range(t.shape[1]):
                mixed = sum(w[c, j] * s[i, j, q, :keys] for j in range(s.shape[1]))
                mixed = mixed.clamp(min=1e-8) / mixed.clamp(min=1e-8).sum()
                target = t[i, c, q, :keys] / t[i, c, q, :keys].sum()
                total = total + (target * (target.log() - mixed.log())).sum()
    return total / queries


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a2d_loss_equals_a_direct_computation(family):
    make, causal = (bert, False) if family == "bert" else (gpt2, True)
    student, teacher = make(2, 2, 16, seed=1), make(3, 4, 32, seed=2)  # other layers, heads and width
    a2d = method("a2d", student, teacher)
    kind = "enc_self" if family == "bert" else "dec_self"
    assert a2d.kinds == (kind,) and a2d.kind_weights == {kind: 1.0}
    assert a2d.shapes[kind]["n_student"] == 4 and a2d.shapes[kind]["n_teacher"] == 12
    with torch.no_grad():
        a2d.aam[kind].logits.normal_(0.0, 1.0)  # a mixing that is not uniform
    batch = padded_batch(causal)
    fam = FAMILIES[family]
    inputs = fam.inputs(batch)
    s_out = student(**inputs, output_attentions=True)
    t_out = teacher(**inputs, output_attentions=True)
    terms = a2d.loss_terms(fam.method_batch(batch), fam.outputs(s_out), fam.outputs(t_out), Progress(1, 0))
    with torch.no_grad():
        expected = direct_a2d(a2d.aam[kind].logits, s_out.attentions, t_out.attentions, batch["attention_mask"],
                              causal)
    assert terms["att"].detach().item() == pytest.approx(float(expected), rel=1e-5)
    assert terms[f"att_{kind}"].item() == pytest.approx(float(expected), rel=1e-5)
    # the KD term on class / next-token logits, against a direct KL
    s_logp = torch.log_softmax(s_out.logits.double(), -1)
    t_p = torch.softmax(t_out.logits.double(), -1)
    kl = (t_p * (t_p.log() - s_logp)).sum(-1)
    real = batch["labels"].ne(-100)
    assert terms["kd"].detach().item() == pytest.approx(float(kl[real].mean().detach()), rel=1e-4)
    # the gradient reaches the student and the AAM
    (terms["att"] + terms["kd"]).backward()
    assert a2d.aam[kind].logits.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_llama_a2d_reads_causal_self_attention():
    student, teacher = llama(1, 2, 16, seed=1), llama(2, 4, 32, seed=2)
    a2d = method("a2d", student, teacher)
    assert a2d.shapes["dec_self"]["n_student"] == 2 and a2d.shapes["dec_self"]["n_teacher"] == 8
    batch = padded_batch(causal=True)
    fam = FAMILIES["llama"]
    s_out = student(**fam.inputs(batch), output_attentions=True)
    t_out = teacher(**fam.inputs(batch), output_attentions=True)
    terms = a2d.loss_terms(fam.method_batch(batch), fam.outputs(s_out), fam.outputs(t_out), Progress(1, 0))
    with torch.no_grad():
        expected = direct_a2d(a2d.aam["dec_self"].logits, s_out.attentions, t_out.attentions,
                              batch["attention_mask"], causal=True)
    assert terms["att"].detach().item() == pytest.approx(float(expected), rel=1e-5)


def test_shapes_in_one_vocabulary():
    b, g = shape_of(bert(3, 4, 32).config), shape_of(gpt2(2, 2, 16).config)
    assert (b.family, b.sides, b.kinds, b.encoder_layers, b.encoder_attention_heads, b.d_model) == \
        ("bert", ("encoder",), ("enc_self",), 3, 4, 32)
    assert (g.family, g.sides, g.kinds, g.decoder_layers, g.decoder_attention_heads, g.d_model) == \
        ("gpt2", ("decoder",), ("dec_self",), 2, 2, 16)


def test_gpt2_value_projection_is_the_value_third_of_c_attn():
    model = gpt2(2, 2, 16)
    proj = FAMILIES["gpt2"].value_projection(model, "decoder")
    h = torch.randn(3, 16)
    _, _, v = model.transformer.h[-1].attn.c_attn(h).split(16, dim=-1)
    assert torch.allclose(torch.nn.functional.linear(h, proj.weight, proj.bias), v, atol=1e-6)


@pytest.mark.parametrize("family,name", [("bert", "tinybert"), ("bert", "minilm"), ("bert", "pkd"), ("bert", "kd"),
                                         ("gpt2", "tinybert"), ("gpt2", "minilm"), ("gpt2", "kd")])
def test_baselines_give_finite_terms_with_gradients(family, name):
    make, causal = (bert, False) if family == "bert" else (gpt2, True)
    heads = 4  # tinybert and minilm need equal heads; layers and width differ
    student, teacher = make(2, heads, 16, seed=1), make(4, heads, 32, seed=2)
    built = method(name, student, teacher)
    batch = padded_batch(causal)
    fam = FAMILIES[family]
    wants = {"output_attentions": True, "output_hidden_states": True}
    s_out = fam.outputs(student(**fam.inputs(batch), **wants))
    with torch.no_grad():
        t_out = fam.outputs(teacher(**fam.inputs(batch), **wants))
    terms = built.loss_terms(fam.method_batch(batch), s_out, t_out, Progress(1, 0))
    weights = built.weights(Progress(1, 0))
    loss = sum(weights[k] * v for k, v in terms.items() if weights.get(k))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_refusals_are_one_line():
    b_s, b_t = bert(1, 2, 16), bert(2, 2, 16)
    with pytest.raises(UserError, match="method a2d needs dec_cross attention, which a bert model lacks"):
        method("a2d", b_s, b_t, "att_kinds=dec-cross")
    with pytest.raises(UserError, match="method alp-kd distils marian models, not bert"):
        method("alp-kd", b_s, b_t)
    with pytest.raises(UserError, match="method pkd distils marian and bert models, not gpt2"):
        method("pkd", gpt2(1, 2, 16), gpt2(2, 2, 16))
    with pytest.raises(UserError, match="the teacher is a gpt2 model and the student a bert model"):
        method("kd", b_s, gpt2(2, 2, 16))
    with pytest.raises(UserError, match="tinybert needs equal attention heads: student 2, teacher 4"):
        method("tinybert", b_s, bert(2, 4, 16))
