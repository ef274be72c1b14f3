"""The AAM (eq. 9) against plain loops: linear and convex modes, shapes, init, weight_matrix."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from a2d.alignment import AttentionAlignment, mixing_matrix
from a2d.utils import UserError


def random_maps(b, n, lq, lk, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, n, lq, lk, generator=g), dim=-1)


def loop_aam(maps: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """H^I_c = sum_j w[j, c] H^S_j + b_c, cell by cell."""
    b, n_s, lq, lk = maps.shape
    n_t = w.shape[1]
    out = np.zeros((b, n_t, lq, lk))
    for bi in range(b):
        for c in range(n_t):
            for q in range(lq):
                for k in range(lk):
                    acc = sum(w[j, c] * maps[bi, j, q, k] for j in range(n_s))
                    out[bi, c, q, k] = acc + (bias[c] if bias is not None else 0.0)
    return out


def test_linear_matches_loop_and_conv2d():
    torch.manual_seed(0)
    aam = AttentionAlignment(6, 4, mode="linear")
    maps = random_maps(2, 6, 3, 5)
    out = aam(maps)
    assert out.shape == (2, 4, 3, 5) and out.dtype == torch.float32
    w, bias = aam.weight_matrix().detach().double().numpy(), aam.bias.detach().double().numpy()
    ref = loop_aam(maps.double().numpy(), w, bias)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-6)
    conv = torch.nn.Conv2d(6, 4, 1)
    with torch.no_grad():
        conv.weight.copy_(aam.weight[:, :, None, None])
        conv.bias.copy_(aam.bias)
    assert torch.allclose(conv(maps), out, atol=1e-6)
    assert aam.weight_matrix().shape == (6, 4)
    assert torch.equal(aam.weight_matrix(), aam.weight.t())


def test_linear_init_like_conv2d():
    torch.manual_seed(0)
    aam = AttentionAlignment(24, 12, mode="linear")
    bound = 1 / math.sqrt(24)
    assert aam.weight.abs().max() <= bound and aam.bias.abs().max() <= bound
    assert aam.weight.std() > 0.5 * bound / math.sqrt(3)  # not degenerate


def test_convex_matches_loop_and_keeps_distributions():
    aam = AttentionAlignment(5, 3, mode="convex")
    with torch.no_grad():
        aam.logits.copy_(torch.randn(3, 5))
    w = aam.weight_matrix()
    assert w.shape == (5, 3)
    assert torch.allclose(w.sum(0), torch.ones(3))
    assert (w > 0).all()
    maps = random_maps(2, 5, 4, 6, seed=1)
    maps[..., -2:] = 0  # "padded keys"
    maps = maps / maps.sum(-1, keepdim=True)
    out = aam(maps)
    ref = loop_aam(maps.double().numpy(), w.detach().double().numpy(), None)
    np.testing.assert_allclose(out.detach().numpy(), ref, atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(2, 3, 4), atol=1e-6)
    assert torch.equal(out[..., -2:], torch.zeros(2, 3, 4, 2))
    assert not hasattr(aam, "bias") or aam.bias is None


def test_convex_init_is_uniform_mixture():
    aam = AttentionAlignment(8, 24, mode="convex")
    assert torch.equal(aam.logits, torch.zeros(24, 8))
    assert torch.allclose(aam.weight_matrix(), torch.full((8, 24), 1 / 8))
    maps = random_maps(1, 8, 2, 3)
    assert torch.allclose(aam(maps), maps.mean(1, keepdim=True).expand(1, 24, 2, 3), atol=1e-6)
    noisy = AttentionAlignment(8, 24, mode="convex", init_std=0.1)
    assert noisy.logits.std() > 0


@pytest.mark.parametrize("mode", ["convex", "linear"])
def test_shapes_from_arguments_and_gradients(mode):
    # student 2 layers x 8 heads, teacher 3 layers x 4 heads
    aam = AttentionAlignment(16, 12, mode=mode)
    maps = random_maps(3, 16, 7, 9).requires_grad_(True)
    out = aam(maps)
    assert out.shape == (3, 12, 7, 9)
    (out * torch.randn_like(out)).sum().backward()
    assert maps.grad is not None and maps.grad.abs().sum() > 0
    for p in aam.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    n_params = sum(p.numel() for p in aam.parameters())
    assert n_params == 16 * 12 + (12 if mode == "linear" else 0)  # M*N*C (+C), section 4.2.1


def test_mixing_matrix_from_state_and_errors():
    aam = AttentionAlignment(4, 2, mode="convex")
    with torch.no_grad():
        aam.logits.normal_()
    assert torch.allclose(mixing_matrix(aam.state_dict()["logits"], "convex"), aam.weight_matrix())
    conv_weight = torch.randn(2, 4, 1, 1)
    assert torch.equal(mixing_matrix(conv_weight, "linear"), conv_weight.flatten(1).t())
    with pytest.raises(UserError, match="aam="):
        AttentionAlignment(4, 2, mode="softmax")
    with pytest.raises(ValueError, match=r"\(B, 4, Lq, Lk\)"):
        aam(random_maps(1, 5, 2, 2))
