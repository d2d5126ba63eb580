"""The LM loss goes through the shared logit_kd on (B*T, V) rows with a mask; padding, accumulation, caches."""
import pytest
import torch

import cvkd.lm.distill as lm_distill
from cvkd.lm import GPT, GPTConfig, TrainingError, accumulate, lm_loss, teacher_targets
from cvkd.losses import logit_kd as core_logit_kd

V, T = 11, 8


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=V, n_layer=1, n_head=2, n_embd=16, block_size=T))


def _batch(B, valid, seed=1):
    """Right-padded batch: row b has valid[b] valid targets."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(valid)[:, None]  # (B, T)
    return {"x": x, "y": y, "mask": mask}


def test_uses_the_shared_logit_kd_on_flat_rows_with_mask(monkeypatch):
    assert lm_distill.logit_kd is core_logit_kd
    calls = []

    def spy(logits_s, logits_t, *args, **kw):
        calls.append((tuple(logits_s.shape), tuple(logits_t.shape), kw.get("mask")))
        return core_logit_kd(logits_s, logits_t, *args, **kw)

    monkeypatch.setattr(lm_distill, "logit_kd", spy)
    b = _batch(3, [8, 5, 2])
    logits_s, logits_t = torch.randn(3, T, V), torch.randn(3, T, V)
    out = lm_distill.lm_loss(logits_s, b["y"], b["mask"], {"logits": logits_t}, alpha=0.3, temperature=2.0)
    assert len(calls) == 2  # CE (alpha=1) and KD (alpha=0), both through logit_kd
    for shape_s, shape_t, mask in calls:
        assert shape_s == shape_t == (3 * T, V)
        assert mask is not None and mask.shape == (3 * T,) and int(mask.sum()) == 15
    want = core_logit_kd(logits_s.reshape(-1, V), logits_t.reshape(-1, V), b["y"].reshape(-1), alpha=0.3,
                         temperature=2.0, mask=b["mask"].reshape(-1))
    assert out["total"].item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd", "skew"])
def test_padding_has_no_effect_on_loss_or_grads(kind):
    b = _batch(2, [8, 3])
    tl = torch.randn(2, T, V)
    results = []
    for fill in (0, 7):
        model = _model()
        x, y, t = b["x"].clone(), b["y"].clone(), tl.clone()
        pad = ~b["mask"]
        x[pad], y[pad], t[pad] = fill, fill, float(fill) * 100  # garbage in every padded position
        out = lm_loss(model(x), y, b["mask"], {"logits": t}, alpha=0.5, temperature=2.0, kind=kind)
        out["total"].backward()
        results.append((out["total"].item(), [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1)


def test_accumulation_equals_one_big_batch_with_uneven_padding():
    big = _batch(4, [8, 1, 3, 8])
    tl = torch.randn(4, T, V)

    def loss_fn(model, b):
        return lm_loss(model(b["x"]), b["y"], b["mask"], {"logits": b["t"]}, alpha=0.3, temperature=2.0, kind="jsd")

    m1 = _model()
    loss_fn(m1, {**big, "t": tl})["total"].backward()
    m2 = _model()
    micro = [{k: v[i:j] for k, v in {**big, "t": tl}.items()} for i, j in ((0, 3), (3, 4))]  # 12 and 8 valid tokens
    terms = accumulate(micro, lambda b: loss_fn(m2, b), step=1)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6)
    ref = loss_fn(_model(), {**big, "t": tl})
    assert terms["total"] == pytest.approx(ref["total"].item(), rel=1e-5)


def test_non_finite_term_is_named():
    b = _batch(1, [8])

    def bad(_):
        return {"ce": torch.tensor(1.0), "kd": torch.tensor(float("nan")), "total": torch.tensor(float("nan"))}

    with pytest.raises(TrainingError, match="'kd' at step 7"):
        accumulate([b], bad, step=7)


def test_cached_teacher_dense_and_topk_match_online():
    torch.manual_seed(0)
    b = _batch(4, [8, 8, 6, 8])
    logits_s = torch.randn(4, T, V, requires_grad=True)
    logits_t = torch.randn(4, T, V) * 4  # a peaked teacher: little mass outside its top few tokens
    for kind, temp in (("forward", 1.0), ("reverse", 2.0), ("jsd", 1.0)):
        online = lm_loss(logits_s, b["y"], b["mask"], {"logits": logits_t}, 0.0, temp, kind)["kd"]
        dense = lm_loss(logits_s, b["y"], b["mask"], teacher_targets(logits_t, 0, temp), 0.0, temp, kind)["kd"]
        assert dense.item() == pytest.approx(online.item(), rel=2e-3)  # fp16 rounding of the logits
        full = lm_loss(logits_s, b["y"], b["mask"], teacher_targets(logits_t, V - 1, temp), 0.0, temp, kind)["kd"]
        assert full.item() == pytest.approx(online.item(), rel=2e-3)  # k = V-1: the tail bucket is one token: exact
        top5 = lm_loss(logits_s, b["y"], b["mask"], teacher_targets(logits_t, 5, temp), 0.0, temp, kind)["kd"]
        assert top5.item() == pytest.approx(online.item(), rel=0.35)  # coarse-grained: an approximation
        if kind == "forward":  # data-processing inequality: bucketing never increases forward KL
            assert top5.item() <= online.item() + 1e-4
    stored = teacher_targets(logits_t, 5, 1.0)
    assert stored["logp"].dtype == torch.float16 and stored["index"].dtype == torch.int16
    assert stored["tail"].shape == (4, T)
