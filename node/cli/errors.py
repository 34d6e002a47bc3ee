"""How the command line turns errors into messages and exit codes: one table, one place.

A handler returns its exit code when it finishes (0 done, 1 the operation failed or found a
problem); when it raises, :func:`node.cli.main` catches every type named in :data:`EXITS` and
:func:`report` prints the message of the nearest class in the error's MRO to stderr and returns
its exit code. Unmapped errors are bugs and keep their traceback.

Exit codes: 0 success, 1 the operation failed, 2 bad usage, config or input (the admin must fix
something), 130 interrupted (Ctrl-C), 141 the reader of stdout went away (``| head``).

Where the same error type means different things at different steps of a command (an
``OSError`` reading the ``--uid-key-file`` is bad input, 2; one writing the report is a failed
operation, 1), the handler wraps that step in :func:`reported_as`, which re-raises the error as
a :class:`CommandUsageError` (2) or :class:`CommandError` (1) with the step's wording in front.
The wording lives with the step; the codes and the printing live here.

``except`` clauses that stay in ``node.cli`` because they do more than translate:

* ``config check``: an invalid file is the command's answer (``INVALID`` and each problem on
  stdout, exit 2), not a failure of the command.
* ``echo``: a failed association is the probe's verdict (``FAILED (...)`` on stdout, exit 1),
  printed like a non-success C-ECHO status.
* ``rules test``: a file that is not DICOM is reported and skipped, the others are still
  grouped by study and evaluated (exit 0 if any study was, 1 if none); only the exception's
  type is shown, as its text can quote file content.
* ``audit export --since`` and ``rules test --at``: bad argument text exits through
  ``SystemExit(2)`` as argparse itself does for bad arguments.
* ``try``/``finally`` (no ``except``) closes the job store and the vendor backends.
* ``vendor`` and ``model`` commands keep their own clauses until they move to the vendor package.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO, TypeVar

from node.audit import AuditError
from node.config import ConfigError
from node.errors import NodeError
from node.sr import SrError
from node.validate import ValidateInferenceError, ValidateUsageError
from scp import ScpError
from secure_infer import InferenceError

__all__ = [
    "CAUGHT",
    "EXITS",
    "CommandError",
    "CommandUsageError",
    "Exit",
    "exit_for",
    "report",
    "reported_as",
]

E = TypeVar("E", bound=BaseException)


class CommandError(NodeError):
    """A step of a command failed; the message is ready to print (exit 1)."""


class CommandUsageError(CommandError):
    """A step of a command met bad usage, config or input the admin must fix (exit 2)."""


@dataclass(frozen=True)
class Exit:
    """What the command line does with one error class: its exit code and its message.

    ``message`` is ``None`` for errors that print nothing (Ctrl-C).
    """

    code: int
    message: Callable[[BaseException], str] | None


def _prefixed(prefix: str) -> Callable[[BaseException], str]:
    return lambda exc: f"{prefix}{exc}"


def _sr_problems(exc: BaseException) -> str:
    problems = exc.problems if isinstance(exc, SrError) else [str(exc)]
    return "cannot build the SR:" + "".join(f"\n  {line}" for line in problems)


EXITS: Mapping[type[BaseException], Exit] = {
    KeyboardInterrupt: Exit(130, None),
    # stdout closed by the reader (``sr show --json | head``): nothing to say, 128 + SIGPIPE
    # as a shell reports a command killed by it (node.cli.main also silences stdout)
    BrokenPipeError: Exit(141, None),
    CommandUsageError: Exit(2, str),
    CommandError: Exit(1, str),
    ConfigError: Exit(2, _prefixed("config error: ")),
    ValidateUsageError: Exit(2, _prefixed("error: ")),
    ValidateInferenceError: Exit(1, _prefixed("inference failed: ")),
    AuditError: Exit(1, _prefixed("error: ")),
    SrError: Exit(1, _sr_problems),
    NodeError: Exit(1, _prefixed("error: ")),
    ScpError: Exit(1, _prefixed("error: ")),
    InferenceError: Exit(1, _prefixed("inference error: ")),
}
"""Error class -> exit code and message; the nearest class in an error's MRO wins.

Classes not listed under :class:`NodeError` get its row (exit 1, ``error: <message>``); node's
messages never contain PHI, so they are printed as they are.
"""

CAUGHT: tuple[type[BaseException], ...] = tuple(EXITS)
"""The types :func:`node.cli.main` catches (every key of :data:`EXITS`)."""


def exit_for(exc: BaseException) -> Exit | None:
    """The row of :data:`EXITS` for ``exc``: its nearest class in the MRO, or ``None``."""
    for cls in type(exc).__mro__:
        row = EXITS.get(cls)
        if row is not None:
            return row
    return None


def report(exc: BaseException, stream: TextIO | None = None) -> int:
    """Print the message for ``exc`` (to stderr by default) and return its exit code.

    Raises ``exc`` again if no row of :data:`EXITS` applies: an unmapped error is a bug.
    """
    row = exit_for(exc)
    if row is None:
        raise exc
    if row.message is not None:
        print(row.message(exc), file=sys.stderr if stream is None else stream)
    return row.code


def _detail(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'"; the message itself is what the admin should read
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


@contextmanager
def reported_as(
    what: str | Callable[[E], str], *catch: type[E], usage: bool = False
) -> Iterator[None]:
    """Report errors of the types ``catch`` raised in the block as a failure of this step.

    Parameters
    ----------
    what
        The step's wording: a prefix (the message becomes ``"<what>: <error>"``) or a function
        of the error that returns the whole message (when only the error's type may be shown,
        or its ``problems`` listed).
    catch
        The error types this step turns into a message; others pass through unchanged.
    usage
        The step reads what the admin named (a key file, a config value, labels): its errors
        are bad input, exit 2, instead of a failed operation, exit 1.
    """
    try:
        yield
    except catch as exc:
        message = f"{what}: {_detail(exc)}" if isinstance(what, str) else what(exc)
        raise (CommandUsageError if usage else CommandError)(message) from exc
