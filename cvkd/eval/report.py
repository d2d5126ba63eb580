"""Writers for evaluation outputs: predictions json, metrics json, one CSV row per run, and a printable table."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from ..data import DataError

SUMMARY = [("map", "mAP@[.5:.95]"), ("ap50", "AP50"), ("ap75", "AP75"), ("ap_small", "AP small"),
           ("ap_medium", "AP medium"), ("ap_large", "AP large"), ("ar100", "AR100")]


def write_predictions(results: list[dict], path: str | Path) -> Path:
    """COCO results json (a list of {image_id, category_id, bbox [x, y, w, h], score})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def write_metrics(metrics: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return path


def csv_row(metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A flat CSV row: the ``extra`` columns first (run name, files...), then the summary metrics."""
    row = dict(extra)
    row.update({k: f"{metrics[k]:.5f}" for k, _ in SUMMARY + [("ar1", ""), ("ar10", "")] if k in metrics})
    row["num_images"] = metrics.get("num_images", "")
    row["num_predictions"] = metrics.get("num_predictions", "")
    return row


def append_csv(path: str | Path, row: dict[str, Any]) -> Path:
    """Append ``row``; the header is written once, when the file is new or empty. A different existing header fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.is_file() or path.stat().st_size == 0
    if not fresh:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if header != list(row):
            raise DataError(f"{path}: existing CSV columns {header} differ from this row's {list(row)}: "
                            "use another file")
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if fresh:
            w.writeheader()
        w.writerow(row)
    return path


def format_table(metrics: dict[str, Any]) -> str:
    """Summary metrics then per-class AP, one per line (-1 = no ground truth in that range)."""
    lines = [f"{label:<14} {metrics[k]:7.4f}" for k, label in SUMMARY if k in metrics]
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(14, *(len(n) for n in per_class))
        lines.append(f"{'class':<{width}} AP@[.5:.95]")
        lines += [f"{name:<{width}} {ap:7.4f}" for name, ap in per_class.items()]
    lines.append(f"{metrics.get('num_images', '?')} images, {metrics.get('num_predictions', '?')} detections")
    return "\n".join(lines)
