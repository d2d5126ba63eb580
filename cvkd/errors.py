"""Every error cvkd reports to a user: one line naming the file or key and the problem.

Commands print ``error: <message>`` and exit 2 for any :class:`CvkdError`; the Python API raises them. The input
errors are also ``ValueError``s, a run that cannot go on also a ``RuntimeError``.
"""


class CvkdError(Exception):
    """Base class: a problem reported as one line, never as a traceback."""


class ConfigError(CvkdError, ValueError):
    """A config key or value (``key=value`` override, YAML file, command-line option)."""


class DataError(CvkdError, ValueError):
    """A dataset, label, image, video or text corpus."""


class ModelError(CvkdError, ValueError):
    """A model: unknown name, wrong checkpoint kind, a teacher/student pair that cannot be distilled."""


class CheckpointError(CvkdError, ValueError):
    """A checkpoint file: missing, corrupt, refused by the safe loader, or not writable."""


class ExportError(CvkdError, ValueError):
    """An export, quantization or ONNX Runtime / OpenVINO problem (bad opset, empty calibration folder, ...)."""


class TrainingError(CvkdError, RuntimeError):
    """A run that cannot go on (non-finite loss, replicas out of sync)."""
