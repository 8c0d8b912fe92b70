"""The command-line entry points as functions: :mod:`.train`, :mod:`.sweep`, :mod:`.report` (``scripts/*.py``
wrap their ``main``), and the gin command line they share (:mod:`.gin_cli`, :mod:`.gin_errors`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def fail(message: object, status: int = 2) -> int:
    """Print ``error: <first line of message>`` on stderr; returns ``status`` (the exit status to give)."""
    text = str(message).strip()
    print(f"error: {text.splitlines()[0] if text else type(message).__name__}", file=sys.stderr)
    return status


def warn(message: str) -> None:
    """Print ``warning: <message>`` on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def arguments(argv: Sequence[str] | None, usage: str) -> list[str] | None:
    """``argv`` (by default ``sys.argv[1:]``) as a list; None once ``usage`` is printed for ``-h``/``--help``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return None
    return args
