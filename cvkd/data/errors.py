"""The one exception type of cvkd.data: a data problem, reported as a single line."""


class DataError(ValueError):
    """A data problem, reported as one line (tools print ``error: <msg>`` and exit 2)."""
