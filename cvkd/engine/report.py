"""Run outputs: ``results.csv`` (one row per epoch, every loss term and the metrics) and its plots."""
from __future__ import annotations

import csv
from pathlib import Path

METRIC_KEYS = ("map", "ap50", "ap75")


def read_rows(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        return []
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def write_rows(csv_path: Path, rows: list[dict]) -> None:
    """Rewrite the whole CSV (columns = union of keys, first-seen order); rows are few, so this stays cheap."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    try:
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in keys})
        tmp.replace(csv_path)
    except OSError:
        tmp.unlink(missing_ok=True)  # the previous CSV stays; the caller reports the folder in one line
        raise


def plot_results(csv_path: Path, out_png: Path) -> None:
    """Loss terms (left) and mAP (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    loss_keys = [k for k in rows[0] if k.startswith("loss_")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in loss_keys:
        ax1.plot(epochs, [float(r[k]) if r.get(k) not in ("", None) else float("nan") for r in rows], label=k[5:])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("mean loss per step")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    for k in METRIC_KEYS:
        vals = [float(r[k]) if r.get(k) not in ("", None) else float("nan") for r in rows]
        ax2.plot(epochs, vals, marker="o", ms=3, label=k)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("COCO AP (val)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle(csv_path.parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
