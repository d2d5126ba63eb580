import math

import pytest
import torch

from cvkd.losses import (
    dfl_expectation,
    distribution_kd,
    iou_imitation,
    teacher_bounded_l2,
)


def test_teacher_bounded_zero_where_student_beats_teacher():
    gt = torch.zeros(3, 4)
    box_t = torch.full((3, 4), 1.0)  # teacher error 4 per box
    box_s = torch.tensor([[0.5, 0, 0, 0], [2.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    # errors: 0.25 (beats teacher), 4 (active: 4 > 4 - 0? 4 + 0 > 4 false -> 0), 4 equal
    loss = teacher_bounded_l2(box_s, box_t, gt, margin=0.0)
    assert loss.item() == pytest.approx(0.0)
    box_s2 = torch.tensor([[0.5, 0, 0, 0], [3.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    loss2 = teacher_bounded_l2(box_s2, box_t, gt, margin=0.0)  # only row 1 active: 9
    assert loss2.item() == pytest.approx(9.0 / 3)
    loss2.backward()
    assert torch.all(box_s2.grad[0] == 0) and box_s2.grad[1, 0] != 0
    # a margin makes the student beat the teacher by m before the term switches off
    assert teacher_bounded_l2(box_s, box_t, gt, margin=1.0).item() == pytest.approx((0 + 4 + 4) / 3)


def test_distribution_kd_hand_value_and_invariants():
    R = 4
    b_t = torch.zeros(1, 4, R)
    b_t[0, 0, 0] = math.log(3.0)  # side 0: [3,1,1,1]/6
    b_s = torch.zeros(1, 4, R)
    p = [0.5, 1 / 6, 1 / 6, 1 / 6]
    kl = sum(pi * math.log(pi / 0.25) for pi in p)
    assert distribution_kd(b_s, b_t, temperature=1.0).item() == pytest.approx(kl, abs=1e-6)
    T = 10.0
    got = distribution_kd(b_s, b_t, temperature=T).item()
    q = torch.softmax(b_t[0, 0] / T, -1)
    want = T * T * (q * (q / 0.25).log()).sum().item()
    assert got == pytest.approx(want, rel=1e-5)
    x = torch.randn(5, 4, 16)
    assert distribution_kd(x, x.clone()).abs().item() < 1e-6
    s = torch.randn(5, 4, 16, requires_grad=True)
    w = torch.tensor([1.0, 0, 0, 1, 0])
    distribution_kd(s, x, weight=w).backward()
    assert torch.all(s.grad[w == 0] == 0) and s.grad[0].abs().sum() > 0


def test_iou_imitation():
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert iou_imitation(b.clone().requires_grad_(), b).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.tensor([[0.0, 0.0, 10.0, 5.0]], requires_grad=True)  # IoU 0.5, enclosing = union -> GIoU 0.5
    loss = iou_imitation(s, b)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    loss.backward()
    assert s.grad.abs().sum() > 0
    assert iou_imitation(torch.zeros(0, 4), torch.zeros(0, 4)).item() == 0.0


def test_dfl_expectation():
    bins = torch.full((2, 4, 5), -1e4)
    bins[..., 3] = 0
    assert torch.allclose(dfl_expectation(bins), torch.full((2, 4), 3.0))
