"""COCO evaluation: run a detector over a CocoData set, or score an existing predictions json, with pycocotools."""
from .coco_eval import (
    METRICS,
    coco_metrics,
    detections_to_coco,
    evaluate,
    predict_dataset,
    remap_predictions,
    score_predictions,
)
from .report import append_csv, csv_row, format_table, write_metrics, write_predictions

__all__ = [
    "METRICS", "append_csv", "coco_metrics", "csv_row", "detections_to_coco", "evaluate", "format_table",
    "predict_dataset", "remap_predictions", "score_predictions", "write_metrics", "write_predictions",
]
