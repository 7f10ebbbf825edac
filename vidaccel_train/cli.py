"""What every command line of the project shares, on the ground floor (it imports nothing of the
project but its errors): argument parsing whose mistakes are one ``error:`` line and exit code 2,
the check of Hydra override syntax, and the one way a command ends on a user error
(:data:`~vidaccel_train.errors.USER_ERRORS`, also when Hydra wrapped one): one ``error:`` line on
standard error and exit code 2."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from vidaccel_train.errors import ConfigError, as_user_error

# A command's exit code after a user error: the file, key or value named is the user's to fix.
USER_ERROR_EXIT = 2


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the project's conventions: the module docstring as the description, kept
    as written, and a mistake as one ``error:`` line with exit code 2."""

    def __init__(self, prog: str, doc: str | None, **kwargs):
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        self.exit(USER_ERROR_EXIT, f"error: {message} (see --help)\n")


def report_user_error(err: BaseException | str) -> int:
    """Print ``err`` (a user error, or what is wrong in words) as the one ``error:`` line;
    returns the exit code to end with."""
    print(f"error: {err}", file=sys.stderr)
    return USER_ERROR_EXIT


@contextmanager
def user_errors_end_the_command(unless: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """A user error raised inside (also one a component raised while Hydra built it) ends the
    process with :func:`report_user_error`; other exceptions pass, as do user errors when
    ``unless()`` says so (a Hydra sweep records a failed job and goes on)."""
    try:
        yield
    except Exception as err:
        user_error = as_user_error(err)
        if user_error is None or unless():
            raise
        sys.exit(report_user_error(user_error))


def run_command(main: Callable[[], int]) -> int:
    """``main()``'s exit code, or :func:`report_user_error`'s for a user error it raises."""
    try:
        return main()
    except Exception as err:
        user_error = as_user_error(err)
        if user_error is None:
            raise
        return report_user_error(user_error)


_UNQUOTED_EQUALS = re.compile(r"^(?P<key>[+~]{0,2}[A-Za-z_][\w.@/-]*)=(?P<value>[^'\"].*=.*)$")


def check_override_syntax(args: list[str]) -> None:
    """Say what Hydra's parser would not: a value holding ``=`` (Lightning names checkpoints
    ``epoch=3-step=100.ckpt``) must be quoted.

    Raises:
        ConfigError: naming the override and how to quote it.
    """
    for arg in args:
        match = _UNQUOTED_EQUALS.match(arg)
        if match and not arg.startswith("-"):
            key, value = match["key"], match["value"]
            raise ConfigError(f"{arg}: Hydra reads '=' in a value as syntax; quote the value: '{key}=\"{value}\"'")


def hydra_command(hydra_main: Callable[[], None]) -> Callable[[], None]:
    """A ``@hydra.main`` function as a command: the overrides' syntax is checked first (one
    ``error:`` line, exit code 2), then Hydra parses them and runs it."""

    def command() -> None:
        with user_errors_end_the_command():
            check_override_syntax(sys.argv[1:])
        hydra_main()

    return command
