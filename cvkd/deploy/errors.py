"""cvkd.deploy's error type (defined with the others in :mod:`cvkd.errors`)."""
from ..errors import ExportError  # noqa: F401
