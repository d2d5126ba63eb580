"""benchmarks/converged.py: the strong-teacher issue's convergence rule."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def converged(import_benchmark):
    return import_benchmark("converged")


def test_rule_compares_the_last_tenth_with_the_tenth_before(converged):
    rising = [0.1 * i for i in range(20)]  # 20 epochs: windows of 2, rise 0.2
    assert converged.judge(rising) == (False, pytest.approx(1.85), pytest.approx(1.65), 2)
    flat = [0.5] * 16 + [0.501, 0.503, 0.504, 0.506]  # rise (0.504 + 0.506 - 0.501 - 0.503) / 2 = 0.003
    ok, last, before, n = converged.judge(flat)
    assert ok and n == 2 and last - before == pytest.approx(0.003)
    with pytest.raises(ValueError):
        converged.judge([0.5])


def test_cli_reads_ultralytics_csv_and_exits_1_when_not_converged(tmp_path):
    shipped = ROOT / "checkpoints" / "cctv_yolov8s_320_e128_ultralytics.results.csv"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "converged.py"), str(shipped)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "rise +0.0133 -> not converged" in r.stdout
    bad = tmp_path / "x.csv"
    bad.write_text("epoch,loss\n1,2\n")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "converged.py"), str(bad)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith(f"error: {bad}: no 'map'") and "Traceback" not in r.stderr


def test_stages_compare_the_ends_of_restarted_stages(converged, tmp_path):
    # each stage dips after its restart and ends higher: read as one run it never converges; its ends rise by
    # (0.62 + 0.64) / 2 - (0.60 + 0.62) / 2 = 0.02, then by 0.003
    stage = lambda end: [end - 0.05] * 8 + [end - 0.01, end + 0.01]  # noqa: E731
    ok, ends, n = converged.judge_stages([stage(0.61), stage(0.63)])
    assert not ok and n == 1 and ends == [pytest.approx(0.62), pytest.approx(0.64)]
    ok, ends, n = converged.judge_stages([stage(0.61), stage(0.63), stage(0.633)], fraction=0.2)
    assert ok and n == 2 and ends[-1] - ends[-2] == pytest.approx(0.003)
    with pytest.raises(ValueError):
        converged.judge_stages([stage(0.6)])
    files = []
    for i, end in enumerate((0.61, 0.63)):
        files.append(tmp_path / f"s{i}.csv")
        files[-1].write_text("epoch,map\n" + "".join(f"{e},{m}\n" for e, m in enumerate(stage(end))))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "converged.py"), "--stages", *map(str, files)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "0.6200 -> 0.6400; last stage rise +0.0200 -> not converged" in r.stdout
