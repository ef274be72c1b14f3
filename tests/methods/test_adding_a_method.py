"""docs/adding-a-method.md's example runs as written: its method builds, gives its term and decays its weight."""
from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from transformers import MarianConfig

from a2d.methods import Progress
from a2d.settings import load_config

from tests.conftest import REPO


def test_the_documented_example_runs():
    text = (REPO / "docs" / "adding-a-method.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/adding-a-method.md", "exec"), namespace)
    cls = namespace["DecayingKD"]
    config = MarianConfig(vocab_size=7, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16)
    method = cls(load_config(None, ["method=kd"]).settings, config, config)
    labels = torch.tensor([[3, 4, -100]])
    s, t = torch.randn(1, 3, 7), torch.randn(1, 3, 7)
    terms = method.loss_terms({"labels": labels}, SimpleNamespace(logits=s), SimpleNamespace(logits=t), Progress(1, 0))
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1)[0, :2].mean()
    assert torch.allclose(terms["kd"], kl, atol=1e-6)
    assert method.weights(Progress(3, 0))["kd"] == 0.9 ** 2
