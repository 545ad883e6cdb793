"""The few exceptions bpexp raises on purpose.

Every error a user can cause is a :class:`BpexpError`. The CLI turns it into one
readable line on stderr and its ``exit_code``; anything else is an internal error
(exit code 1).
"""

from __future__ import annotations


class BpexpError(Exception):
    """Base class of the errors a user can cause and fix.

    Attributes:
        exit_code: the process exit code the CLI uses for it (2: bad input).
    """

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(BpexpError):
    """A spec or flag that does not validate: unknown key, value out of range."""


class DataError(BpexpError):
    """A dataset that cannot be used: missing file or array, NaN, bad labels."""


class ServiceError(BpexpError):
    """A tracking server, database or storage that cannot be reached."""


class TrainingError(BpexpError):
    """A training job that cannot go on, such as non-finite weights where they must be finite."""
