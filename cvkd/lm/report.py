"""LM run plot: training loss terms and held-out loss / bits per character against optimizer steps."""
from __future__ import annotations

from pathlib import Path

from ..engine.report import read_rows


def _col(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in ("", None) else float("nan") for r in rows]


def plot_lm_results(csv_path: Path, out_png: Path) -> None:
    """Left: train ``loss_*`` terms and ``val_loss`` per step; right: val bits per character."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(csv_path)
    if not rows:
        return
    steps = _col(rows, "step")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for k in [k for k in rows[0] if k.startswith("loss_")] + ["val_loss"]:
        ax1.plot(steps, _col(rows, k), marker="o", ms=3, label=k)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (nats / token)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(steps, _col(rows, "val_bpc"), marker="o", ms=3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("val bits per character")
    ax2.grid(alpha=0.3)
    fig.suptitle(csv_path.parent.name)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
