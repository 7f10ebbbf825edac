"""What every command line of the project shares, on the ground floor (it imports nothing of the
project but its errors): argument parsing whose mistakes are one ``error:`` line and exit code 2,
and running a command so that :data:`~vidaccel_train.errors.USER_ERRORS` end the same way."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from vidaccel_train.errors import USER_ERRORS


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the project's conventions: the module docstring as the description, kept
    as written, and a mistake as one ``error:`` line with exit code 2."""

    def __init__(self, prog: str, doc: str | None, **kwargs):
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def run_command(main: Callable[[], int]) -> int:
    """``main()``'s exit code; a user error it raises is printed as one ``error:`` line, exit code 2."""
    try:
        return main()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
