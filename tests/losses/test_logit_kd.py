import math

import pytest
import torch
import torch.nn.functional as F

from cvkd.losses import (
    DIVERGENCES,
    kd_divergence,
    logit_kd,
    sigmoid_kd,
    teacher_score_weights,
)


def _hand_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_forward_kl_hand_computed():
    z_s = torch.tensor([[0.0, 0.0]])
    z_t = torch.tensor([[math.log(3.0), 0.0]])  # softmax = [0.75, 0.25]
    got = kd_divergence(z_s, z_t, temperature=1.0, kind="forward")
    assert got.item() == pytest.approx(_hand_kl([0.75, 0.25], [0.5, 0.5]), abs=1e-6)
    got_rev = kd_divergence(z_s, z_t, kind="reverse")
    assert got_rev.item() == pytest.approx(_hand_kl([0.5, 0.5], [0.75, 0.25]), abs=1e-6)


def test_jsd_and_skew_hand_computed():
    p, q = [0.75, 0.25], [0.5, 0.5]
    z_t = torch.tensor([[math.log(3.0), 0.0]])
    z_s = torch.zeros(1, 2)
    beta = 0.3
    m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
    want = beta * _hand_kl(p, m) + (1 - beta) * _hand_kl(q, m)
    assert kd_divergence(z_s, z_t, kind="jsd", beta=beta).item() == pytest.approx(want, abs=1e-6)
    assert kd_divergence(z_s, z_t, kind="skew", beta=beta).item() == pytest.approx(_hand_kl(p, m), abs=1e-6)


def test_hinton_formula_with_ce_and_t2():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(5, 7), torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    a, T = 0.3, 4.0
    p_t = F.softmax(z_t / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(z_s / T, -1))).sum(-1).mean()
    want = a * F.cross_entropy(z_s, y) + (1 - a) * T * T * kl
    got = logit_kd(z_s, z_t, target=y, alpha=a, temperature=T)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_on_self_and_nonnegative(kind):
    torch.manual_seed(1)
    z = torch.randn(16, 10) * 3
    assert logit_kd(z, z.clone(), temperature=2.0, kind=kind).abs().item() < 1e-6
    z2 = torch.randn(16, 10) * 3
    assert (kd_divergence(z2, z, 2.0, kind) >= -1e-6).all()


def test_t_squared_scaling():
    torch.manual_seed(2)
    z_s, z_t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    raw = kd_divergence(z_s, z_t, T).mean()
    assert logit_kd(z_s, z_t, temperature=T).item() == pytest.approx(T * T * raw.item(), rel=1e-6)


def test_masked_rows_have_no_effect_and_no_gradient():
    torch.manual_seed(3)
    z_s = torch.randn(6, 5, requires_grad=True)
    z_t = torch.randn(6, 5)
    mask = torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    loss = logit_kd(z_s, z_t, temperature=2.0, mask=mask)
    loss.backward()
    assert torch.all(z_s.grad[~mask] == 0) and torch.all(z_s.grad[mask].abs().sum(-1) > 0)
    # changing masked rows changes nothing
    z_s2 = z_s.detach().clone()
    z_s2[~mask] = 1e3
    assert logit_kd(z_s2, z_t, temperature=2.0, mask=mask).item() == pytest.approx(loss.item(), rel=1e-6)
    # equals the mean over the valid rows only
    want = logit_kd(z_s.detach()[mask], z_t[mask], temperature=2.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_padding_does_not_scale_with_sequence_length():
    """The batchmean-over-(B,T,V) bug: the KD value must not depend on how much padding a batch has."""
    torch.manual_seed(4)
    B, T, V = 2, 3, 11
    z_s, z_t = torch.randn(B, T, V), torch.randn(B, T, V)
    short = logit_kd(z_s.reshape(-1, V), z_t.reshape(-1, V))
    pad = 5
    zs_pad = torch.cat([z_s, torch.randn(B, pad, V)], 1).reshape(-1, V)
    zt_pad = torch.cat([z_t, torch.randn(B, pad, V)], 1).reshape(-1, V)
    mask = torch.cat([torch.ones(B, T), torch.zeros(B, pad)], 1).reshape(-1)
    assert logit_kd(zs_pad, zt_pad, mask=mask).item() == pytest.approx(short.item(), rel=1e-6)
    # what batchmean over the unflattened tensor would give instead is off by the factor T
    bm = F.kl_div(F.log_softmax(z_s, -1), F.log_softmax(z_t, -1), log_target=True, reduction="batchmean")
    assert bm.item() == pytest.approx(short.item() * T, rel=1e-5)


def test_gradients_reach_student_only():
    z_s = torch.randn(3, 4, requires_grad=True)
    z_t = torch.randn(3, 4, requires_grad=True)
    logit_kd(z_s, z_t, temperature=2.0).backward()
    assert z_s.grad is not None and z_t.grad is None


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_stable_with_huge_logits_and_neg_inf(kind):
    z_s = torch.tensor([[1e4, -1e4, 0.0, float("-inf")], [5.0, 1e4, -1e4, float("-inf")]], requires_grad=True)
    z_t = torch.tensor([[-1e4, 1e4, 0.0, float("-inf")], [1e4, 5.0, 0.0, float("-inf")]])
    loss = logit_kd(z_s, z_t, temperature=1.0, kind=kind)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(z_s.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown KD divergence"):
        kd_divergence(torch.zeros(1, 2), torch.zeros(1, 2), kind="kl")
    with pytest.raises(ValueError, match="differ"):
        kd_divergence(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="hard targets"):
        logit_kd(torch.zeros(1, 2), torch.zeros(1, 2), alpha=0.5)


def test_sigmoid_kd_hand_computed():
    z_s = torch.tensor([[0.0]])
    z_t = torch.tensor([[math.log(3.0)]])  # sigmoid = 0.75
    got = sigmoid_kd(z_s, z_t, temperature=1.0)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert got.item() == pytest.approx(want, abs=1e-6)
    T = 2.0
    p_t, p_s = torch.sigmoid(torch.tensor(math.log(3.0) / T)).item(), 0.5
    want_t = T * T * (p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s)))
    assert sigmoid_kd(z_s, z_t, temperature=T).item() == pytest.approx(want_t, abs=1e-6)


def test_sigmoid_kd_invariants_and_weights():
    torch.manual_seed(5)
    z = torch.randn(8, 3)
    assert sigmoid_kd(z, z.clone(), 2.0).abs().item() < 1e-6
    z_s = torch.randn(8, 3, requires_grad=True)
    fg = torch.tensor([1, 0, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    loss = sigmoid_kd(z_s, z, fg_mask=fg, bg_weight=0.0)
    loss.backward()
    assert torch.all(z_s.grad[~fg] == 0) and torch.all(z_s.grad[fg].abs().sum(-1) > 0)
    assert loss.item() == pytest.approx(sigmoid_kd(z_s.detach()[fg], z[fg]).item(), rel=1e-6)
    w = teacher_score_weights(z)
    assert w.shape == (8,) and torch.allclose(w, z.sigmoid().amax(-1))
    z_s2 = torch.randn(8, 3, requires_grad=True)
    z_t2 = torch.randn(8, 3, requires_grad=True)
    sigmoid_kd(z_s2, z_t2, weight=teacher_score_weights(z_t2)).backward()
    assert z_t2.grad is None
