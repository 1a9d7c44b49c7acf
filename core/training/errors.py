"""How the shared command line reports bad input: one line, exit code 2, no traceback.

A user who mistypes a value, points at a missing checkpoint or breaks a YAML file should see
one line that names the input and the fix, not a 60-line traceback. Real bugs keep their
traceback. The rules:

* :class:`UsageError` (a ``ValueError``) is raised by the command line's own checks.
* A ``ValueError`` raised by the project's own code (``core``, the app's package) is bad
  input as well: the project's convention is that such errors name the input and the fix.
  Raised inside third-party code (torch, ...) it is taken for a bug.
* A file error (``FileNotFoundError``, ``PermissionError``, ...) is bad input wherever it is
  raised: its message names the path.
* Anything else is a bug: traceback.

``--debug`` on the command line (removed before LightningCLI parses it) or
``SPECIALIST_FINETUNERS_DEBUG=1`` prints the traceback of bad input too (exit code still 2),
and the full usage text with a parse error.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser

#: Environment variable that turns on full tracebacks (``1``, ``true``, ``yes``, ``on``).
DEBUG_ENV = "SPECIALIST_FINETUNERS_DEBUG"
#: Command-line flag that does the same; run_cli removes it before LightningCLI parses.
DEBUG_FLAG = "--debug"
#: Exit code of every usage error (the same as argparse's).
USAGE_EXIT_CODE = 2

#: File errors: bad input wherever they are raised (the message names the path).
FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class UsageError(ValueError):
    """Bad input to the command line; the message names the input and says how to fix it."""


def pop_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """Remove every ``--debug`` from ``argv``; return the rest and whether one was there.

    LightningCLI does not know the flag, so it must not see it.
    """
    rest = [token for token in argv if token != DEBUG_FLAG]
    return rest, len(rest) != len(argv)


def debug_from_env() -> bool:
    """Whether ``SPECIALIST_FINETUNERS_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines included) made one space."""
    return " ".join(message.split())


def top_package(obj: type | str) -> str:
    """Top-level package of a class or a module name: ``apps.vision.module`` -> ``apps``."""
    name = obj if isinstance(obj, str) else obj.__module__
    return name.split(".", 1)[0]


def _raised_in(exc: BaseException) -> str:
    """Module name of the frame that raised ``exc`` (the innermost traceback frame)."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def is_user_error(exc: BaseException, packages: Iterable[str]) -> bool:
    """Whether ``exc`` reports bad input (one line, exit 2) rather than a bug (traceback).

    Args:
        exc: The exception that ended the run.
        packages: Top-level packages whose messages follow the project's convention (name
            the input and the fix), e.g. ``{"core", "apps"}``.
    """
    if isinstance(exc, (UsageError, *FILE_ERRORS)):
        return True
    return isinstance(exc, ValueError) and top_package(_raised_in(exc)) in set(packages)


def describe(exc: BaseException) -> str:
    """The one line printed for a usage error: ``error: <message>``."""
    return f"error: {one_line(str(exc)) or type(exc).__name__}"


@contextmanager
def usage_errors_exit(packages: Iterable[str], enabled: bool, debug: bool) -> Iterator[None]:
    """Turn bad input raised in the block into ``error: <message>`` on stderr and exit 2.

    Args:
        packages: See :func:`is_user_error`.
        enabled: ``False`` lets every exception through unchanged (for callers in Python).
        debug: Print the traceback before the line (``--debug`` / ``SPECIALIST_FINETUNERS_DEBUG``).

    Raises:
        SystemExit: With code 2 for bad input; other exceptions propagate unchanged.
    """
    packages = set(packages)
    try:
        yield
    except Exception as exc:
        if not enabled or not is_user_error(exc, packages):
            raise
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        sys.stderr.write(describe(exc) + "\n")
        sys.stderr.flush()
        raise SystemExit(USAGE_EXIT_CODE) from None


class ShortErrorParser(LightningArgumentParser):
    """LightningArgumentParser whose parse errors are one line instead of the usage text.

    The full usage of a subcommand runs to 80 lines and hides the error under it. With
    ``full_errors`` (set by ``--debug``) the parser behaves as jsonargparse does.
    """

    full_errors: bool = False

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print ``error: <message>`` and where to find the options; exit with code 2."""
        if not self.exit_on_error or self.full_errors:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        has_help = any(isinstance(a, argparse._HelpAction) for a in parser._actions)
        tip = f" (`{prog} --help` lists the options)" if has_help else ""
        sys.stderr.write(f"error: {one_line(message)}{tip}\n")
        sys.stderr.flush()
        raise SystemExit(USAGE_EXIT_CODE)
