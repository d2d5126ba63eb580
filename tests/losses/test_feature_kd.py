import math

import pytest
import torch

from cvkd.losses import (
    HintAdapter,
    attention_masks,
    box_mask,
    cwd_loss,
    feature_hint,
    feature_hint_levels,
    fgd_loss,
    hint_parts,
    pkd_loss,
    pkd_normalize,
    pkd_parts,
    resize_to,
)


def test_hint_hand_computed_and_zero_on_self():
    f_t = torch.zeros(1, 2, 2, 2)
    f_s = torch.zeros(1, 2, 2, 2)
    f_s[0, 0, 0, 0] = 2.0  # one squared error of 4 over 2 channels * 4 cells
    assert feature_hint(f_s, f_t).item() == pytest.approx(4.0 / 8)
    f = torch.randn(2, 3, 4, 4)
    assert feature_hint(f, f.clone()).item() == 0.0


def test_hint_masks_and_background_weight():
    f_t = torch.zeros(1, 1, 2, 2)
    f_s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    fg = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    loss = feature_hint(f_s, f_t, fg_mask=fg, bg_weight=0.0)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert f_s.grad[0, 0, 0, 0] != 0 and torch.all(f_s.grad[0, 0].flatten()[1:] == 0)
    # background weight 0.5: (1*1 + 0.5*(4+9+16)) / (1 + 0.5*3)
    assert feature_hint(f_s, f_t, fg_mask=fg, bg_weight=0.5).item() == pytest.approx((1 + 0.5 * 29) / 2.5)


def test_hint_levels_one_normalisation_over_levels():
    # level A: 4 cells of weight 1, squared error 1 each; level B: 1 cell of weight 0.01 with squared error 100
    f_t_a, f_s_a = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    f_t_b, f_s_b = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 10.0, requires_grad=True)
    parts = [hint_parts(f_s_a, f_t_a), hint_parts(f_s_b, f_t_b, torch.full((1, 1, 1), 0.01))]
    joint = feature_hint_levels(parts)
    assert joint.item() == pytest.approx((4 * 1.0 + 0.01 * 100) / 4.01)
    # the per-level mean gives the near-empty level a full half share: (1 + 100) / 2
    per_level = torch.stack([n / d for n, d in parts]).mean()
    assert per_level.item() == pytest.approx(50.5)
    assert feature_hint(f_s_a, f_t_a).item() == pytest.approx((parts[0][0] / parts[0][1]).item())
    joint.backward()
    assert f_s_b.grad.item() == pytest.approx(0.01 * 2 * 10 / 4.01)
    # PKD parts: scale-free, zero on a scaled copy
    f = torch.randn(2, 3, 4, 4)
    assert feature_hint_levels([pkd_parts(f, 7 * f + 1)]).item() < 1e-6
    assert feature_hint_levels([pkd_parts(f, f.flip(-1))]).item() == pytest.approx(pkd_loss(f, f.flip(-1)).item())


def test_adapter_resizes_and_gets_gradient():
    ad = HintAdapter(4, 8)
    f_s = torch.randn(2, 4, 5, 5, requires_grad=True)
    f_t = torch.randn(2, 8, 10, 10)
    out = ad(f_s, f_t.shape[-2:])
    assert out.shape == (2, 8, 10, 10)
    feature_hint(out, f_t).backward()
    assert ad.proj.weight.grad.abs().sum() > 0 and f_s.grad is not None
    assert resize_to(f_t, (10, 10)) is f_t


def test_box_mask_and_area_norm():
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0]])
    m = box_mask(boxes, torch.tensor([0, 1]), 2, (4, 4), stride=8)
    assert m.shape == (2, 4, 4)
    assert m[0, :2, :2].sum() == 4 and m[0].sum() == 4 and m[1, 2:, 2:].sum() == 4 and m[1].sum() == 4
    ma = box_mask(boxes, torch.tensor([0, 0]), 1, (4, 4), stride=8, area_norm=True)
    assert ma[0, 0, 0].item() == pytest.approx(0.25)
    assert box_mask(torch.zeros(0, 4), torch.zeros(0), 3, (2, 2), 8).sum() == 0


def test_attention_masks_average_to_one():
    f = torch.randn(2, 3, 4, 5)
    sp, ch = attention_masks(f, 0.5)
    assert sp.shape == (2, 4, 5) and ch.shape == (2, 3)
    assert torch.allclose(sp.mean((1, 2)), torch.ones(2)) and torch.allclose(ch.mean(1), torch.ones(2))


def test_fgd_zero_on_self_and_gradient():
    torch.manual_seed(0)
    f_t = torch.randn(2, 3, 4, 4)
    fg = box_mask(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([0]), 2, (4, 4), 8, area_norm=True)
    assert fgd_loss(f_t.clone(), f_t, fg, gamma_attn=1.0).abs().item() < 1e-6
    f_s = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = fgd_loss(f_s, f_t, fg, gamma_attn=1.0)
    loss.backward()
    assert loss.item() > 0 and f_s.grad.abs().sum() > 0


def test_cwd_hand_computed_and_invariants():
    f_t = torch.zeros(1, 1, 1, 2)
    f_t[0, 0, 0, 0] = torch.log(torch.tensor(3.0)).item()  # softmax = [0.75, 0.25]
    f_s = torch.zeros(1, 1, 1, 2)
    import math

    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert cwd_loss(f_s, f_t, temperature=1.0).item() == pytest.approx(kl, abs=1e-6)
    f = torch.randn(2, 4, 3, 3)
    assert cwd_loss(f, f.clone(), 4.0).abs().item() < 1e-6
    g = torch.randn(2, 4, 3, 3, requires_grad=True)
    f_t2 = torch.randn(2, 4, 3, 3, requires_grad=True)
    cwd_loss(g, f_t2).backward()
    assert g.grad is not None and f_t2.grad is None


def test_pkd_scale_invariant():
    torch.manual_seed(1)
    f_s, f_t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = pkd_loss(f_s, f_t)
    b = pkd_loss(f_s, 10 * f_t + 3)
    assert a.item() == pytest.approx(b.item(), rel=1e-4)
    assert pkd_loss(f_t, 5 * f_t).item() < 1e-6


def test_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="feature shapes differ"):
        feature_hint(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3))


def test_fgd_attention_term_is_l1_sum_per_image():
    """FGD's L_at = sum|A_s - A_t| / B (paper): teacher [0, 0] has spatial attention [1, 1]; a student with
    |f| = [T ln 3, 0] has 2 * softmax([ln 3, 0]) = [1.5, 0.5], so the L1 sum is 1 per image (a mean would give 0.5)."""
    T = 0.5
    f_t = torch.zeros(2, 1, 1, 2)
    f_s = torch.zeros(2, 1, 1, 2)
    f_s[:, 0, 0, 0] = T * math.log(3.0)
    fg = torch.zeros(2, 1, 2)
    at = fgd_loss(f_s, f_t, fg, temperature=T, gamma_attn=1.0) - fgd_loss(f_s, f_t, fg, temperature=T, gamma_attn=0.0)
    assert at.item() == pytest.approx(1.0, abs=1e-5)


def test_pkd_channel_stats_are_the_default_and_image_stats_an_option():
    # one channel, two images [0, 2] and [4, 6]: over (N, H, W) mean 3 and unbiased std sqrt(20 / 3)
    f = torch.tensor([0.0, 2.0, 4.0, 6.0]).reshape(2, 1, 1, 2)
    expect = (f - 3.0) / math.sqrt(20.0 / 3.0)
    assert torch.allclose(pkd_normalize(f), expect, atol=1e-5)
    assert torch.allclose(pkd_normalize(f, "image"), torch.tensor([-1.0, 1.0, -1.0, 1.0]).reshape(2, 1, 1, 2), atol=1e-5)
    # a student that is the teacher with the second image scaled by 10: per-image stats cannot see it, the paper's can
    f_s = f.clone()
    f_s[1] *= 10
    assert pkd_loss(f_s, f, stats="image").item() < 1e-8
    assert pkd_loss(f_s, f).item() > 0.01
    assert pkd_parts(f_s, f)[0].item() > 0 and pkd_parts(f_s, f, stats="image")[0].item() < 1e-8
    with pytest.raises(ValueError, match="channel' or 'image"):
        pkd_normalize(f, "batch")
