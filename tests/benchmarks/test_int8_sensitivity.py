"""benchmarks/int8_sensitivity.py: quantization switched on in parts, and ranges from quantiles."""
import copy

import torch

from cvkd.deploy.qat import calibrate, freeze_ranges, prepare_qat
from cvkd.models import build_detector

IMG = 64


def prepared(scheme="npu"):
    torch.manual_seed(0)
    m = build_detector("yolov8n.yaml", ["person"]).eval()
    with torch.no_grad():  # wider than the init, whose deep activations are nearly constant
        for name, p in m.model.named_parameters():
            if p.dim() == 4 and ".dfl." not in name:
                p.normal_(0, (2 / p[0].numel()) ** 0.5)  # He init
    q = copy.deepcopy(m)
    prepare_qat(q.model, scheme)
    calibrate(q.model, [torch.rand(2, 3, IMG, IMG) for _ in range(2)])
    freeze_ranges(q.model)
    return m, q.eval()


def test_everything_off_is_the_float_model_and_each_part_changes_it(import_benchmark):
    sens = import_benchmark("int8_sensitivity")
    m, q = prepared()
    x = torch.rand(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = m.model(x)[0]
        sens.set_quantized(q.model, weights=False, acts=lambda n: False)
        off = q.model(x)[0]  # BatchNorm folded, nothing quantized: the float model up to rounding
        sens.set_quantized(q.model, weights=True, acts=lambda n: False)
        w_only = q.model(x)[0]
        head = sens.head_prefix(q.model)
        assert head == "model.22."
        sens.set_quantized(q.model, weights=False, acts=lambda n: n.startswith(head))
        head_only = q.model(x)[0]
        sens.set_quantized(q.model, weights=True, acts=lambda n: True)
        full = q.model(x)[0]
    torch.testing.assert_close(off, ref, rtol=1e-4, atol=1e-3)
    for part in (w_only, head_only, full):
        assert not torch.allclose(part, ref, rtol=1e-4, atol=1e-3)


def test_quantile_ranges_sit_inside_min_max(import_benchmark):
    sens = import_benchmark("int8_sensitivity")
    torch.manual_seed(0)
    m = build_detector("yolov8n.yaml", ["person"])
    prepare_qat(m.model, "per_channel")
    batches = [torch.rand(2, 3, IMG, IMG) for _ in range(2)]
    minmax = copy.deepcopy(m)
    calibrate(minmax.model, batches)
    sens.quantile_ranges(m.model, batches, 0.99)
    obs_q, obs_m = sens.observers(m.model), sens.observers(minmax.model)
    assert obs_q.keys() == obs_m.keys() and len(obs_q) > 100
    # the input image's range is exact: quantiles of uniform [0, 1) noise
    img = obs_q["model.0.conv.act_in"]
    assert 0.0 < float(img.lo) < 0.02 and 0.98 < float(img.hi) < 1.0
    inside = [float(obs_m[n].lo) - 1e-6 <= float(o.lo) <= float(o.hi) <= float(obs_m[n].hi) + 1e-6
              for n, o in obs_q.items()]
    assert sum(inside) / len(inside) > 0.9  # later layers see differently quantized inputs: most, not all
    assert all(o.calibrated and "update" not in o.__dict__ for o in obs_q.values())  # the min/max observer is back
