"""The errors a user can cause and fix, on the ground floor: this module imports nothing of the
project, so any layer raises them and every command line turns them into one ``error:`` line
(exit code 2) instead of a traceback. Each message names the file, key or value at fault and
what would work."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and a value that would."""


class DatasetLayoutError(ValueError):
    """The data root does not hold a dataset in the expected layout."""


class VideoDecodeError(RuntimeError):
    """A file that cannot be read as video; the message names the file and the reason."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read safely, or matched to the model."""


class LoweringError(RuntimeError):
    """The program could not be lowered or does not run wholly inside XNNPACK."""


class ArtifactError(RuntimeError):
    """An exported program that is missing, unlisted, not the file its manifest describes, or
    that the runtime cannot load; or an export folder without a readable manifest."""


class OutputError(RuntimeError):
    """An output path that cannot be written (read-only, not a folder, or its disk full: a
    checkpoint, an export, predict's files); said before the work starts where it can be, and
    with nothing half-written where it cannot. The message names the path (and for a full disk
    the sizes) and what to do."""


class PredictError(ValueError):
    """Inputs or options of ``predict`` that cannot be run: said before any decoding."""


# What every command line reports as one ``error:`` line and exit code 2.
USER_ERRORS = (
    ConfigError,
    DatasetLayoutError,
    VideoDecodeError,
    CheckpointError,
    LoweringError,
    ArtifactError,
    PredictError,
    OutputError,
)


def check_count(key: str, value, minimum: int | None = 1, expected: str | None = None) -> int:
    """``value``, an integer (a bool is not one) of at least ``minimum`` (None: any integer).

    Raises:
        ConfigError: ``<key> must be <expected>, got <value>`` (``expected``: "a positive integer"
            for a minimum of 1, "an integer" for none, else "<minimum> or more").
    """
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        if expected is None:
            expected = {1: "a positive integer", None: "an integer"}.get(minimum, f"{minimum} or more")
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return value


def check_number(key: str, value, low: float = 0.0, high: float | None = None) -> float:
    """``value``, a number (a bool is not one) above ``low`` and, with ``high``, at most ``high``.

    Raises:
        ConfigError: ``<key> must be a positive number`` (or ``in (low, high]``), ``got <value>``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > low
        or (high is not None and value > high)
    ):
        expected = (
            f"in ({low:g}, {high:g}]" if high is not None else "a positive number" if low == 0 else f"above {low:g}"
        )
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return value


def as_user_error(err: BaseException) -> BaseException | None:
    """``err`` if it is one of :data:`USER_ERRORS`, or the one it was raised from (Hydra's
    ``InstantiationException`` wraps what a component raised while being built); else None."""
    while err is not None:
        if isinstance(err, USER_ERRORS):
            return err
        err = err.__cause__
    return None
