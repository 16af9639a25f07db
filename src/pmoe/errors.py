"""User-facing errors: a message that names the bad value and what is expected.

The CLI prints these without a traceback and exits with status 2.
"""


class PmoeError(ValueError):
    """A bad input, file or configuration given to pmoe by its user."""


def check(condition: bool, message: str) -> None:
    """Raise PmoeError(message) unless `condition` holds."""
    if not condition:
        raise PmoeError(message)


def os_message(e: OSError) -> str:
    """One line for an error of the operating system (exists, not a folder, permission, disk full): what and where."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{e.strerror or type(e).__name__}{f': {where}' if where else ''}"
