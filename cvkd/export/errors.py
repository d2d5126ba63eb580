"""The export error type: every problem with an export request is one line."""
from __future__ import annotations


class ExportError(ValueError):
    """An export, quantization or ONNX Runtime problem (bad opset, empty calibration folder, ...): one line."""
