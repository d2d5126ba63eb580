"""cvkd.data's error type (defined with the others in :mod:`cvkd.errors`)."""
from ..errors import DataError  # noqa: F401
