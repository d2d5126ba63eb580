"""The ``cvkd`` subcommands, one module each (``cvkd.cli`` dispatches to them)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


def run_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], object],
                argv: list[str] | None, level: int = logging.INFO, interrupted: str = "") -> int:
    """Parse ``argv``, call ``run(args)``; a :class:`cvkd.errors.CvkdError` is one ``error:`` line and exit 2,
    Ctrl-C prints ``interrupted`` (when given) and exits 130."""
    from ..errors import CvkdError
    from ..runs import console_logging

    args = parser.parse_args(argv)
    console_logging(level)
    try:
        run(args)
    except CvkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not interrupted:
            raise
        print(interrupted.format(args=args), file=sys.stderr)
        return 130
    return 0
