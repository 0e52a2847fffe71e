"""The exit-status contract of every jaxslim command, in one place.

========  ==================================================================================
status    meaning
========  ==================================================================================
0         done
1         the job ran and failed on its own terms: a non-finite loss, a conversion check that
          exceeds its tolerance
2         bad input or environment: an unknown preset or flag, a bad value, a missing, corrupt
          or incompatible file, a run directory in use, a filesystem error (read-only, full,
          a file where a directory should be), a checkpoint that could not be saved
130       interrupted (Ctrl-C)
========  ==================================================================================

The message is one ``<command>: error: ...`` line on standard error (a few indented lines follow
when the error lists several things, e.g. every mismatched tensor), never a traceback; ``--debug``
(or ``JAXSLIM_DEBUG=1``) lets the exception through with its traceback.

Example:
    >>> import contextlib, sys
    >>> with contextlib.redirect_stderr(sys.stdout):  # show the message here
    ...     run_command("jaxslim-x", lambda: int("seven"), debug=False)
    jaxslim-x: error: invalid literal for int() with base 10: 'seven'
    2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
# lines of a long message shown before the rest is cut (--debug shows all of it); jaxslim's own
# listings (mismatched tensors, config differences) are bounded well below this
_MAX_LINES = 200


class JobFailed(Exception):
    """The job ran to its end and its outcome is a failure (exit status 1)."""


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is in ``argv`` (or ``JAXSLIM_DEBUG=1``), and ``argv`` without it."""
    rest = [a for a in argv if a != "--debug"]
    return (len(rest) != len(argv) or os.environ.get("JAXSLIM_DEBUG") == "1"), rest


def run_command(
    prog: str,
    body: Callable[[], int | None],
    *,
    debug: bool,
    failures: tuple[type[BaseException], ...] = (),
) -> int:
    """Runs ``body`` and turns what it raises into the status and message of the contract.

    Args:
        prog: the command's name, the prefix of its messages.
        body: the command; returns its status (``None`` for 0).
        debug: let exceptions through with their tracebacks.
        failures: exception types that are the job's own failure (status 1), besides
            :class:`JobFailed`.

    Returns:
        The exit status.
    """
    job_failures: tuple[type[BaseException], ...] = (JobFailed, *failures)
    try:
        status = body()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except job_failures as e:
        if debug:
            raise
        print(f"{prog}: failed: {_message(e)}", file=sys.stderr)
        return FAILED
    except Exception as e:
        if debug:
            raise
        print(f"{prog}: error: {_message(e)}", file=sys.stderr)
        return BAD_INPUT
    return OK if status is None else int(status)


def _message(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    # jaxslim's own errors, plain ValueErrors and OS errors ("[Errno 28] No space left on device:
    # 'path'") say what happened; anything else is named by its type as well
    if not (type(e).__module__.startswith("jaxslim") or type(e) is ValueError or isinstance(e, OSError)):
        text = f"{type(e).__name__}: {text}"
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:
        cut = len(lines) - _MAX_LINES
        lines = lines[:_MAX_LINES] + [f"  ... {cut} more lines (run with --debug for everything)"]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


__all__ = [
    "BAD_INPUT",
    "FAILED",
    "INTERRUPTED",
    "OK",
    "JobFailed",
    "debug_requested",
    "positive_float",
    "positive_int",
    "run_command",
]
