"""User-facing errors: a message that names the bad value and what is expected.

The CLI prints these without a traceback and exits with status 2.
"""


class PmoeError(ValueError):
    """A bad input, file or configuration given to pmoe by its user."""


def check(condition: bool, message: str) -> None:
    """Raise PmoeError(message) unless `condition` holds."""
    if not condition:
        raise PmoeError(message)
