"""Errors a user can fix: the CLI prints their one-line message and exits 2."""


class EptkUsageError(Exception):
    """Bad usage or bad input. The message is one line that names the valid choices."""


def choices(valid) -> str:
    """'a, b, c' for an error message naming the valid choices."""
    return ", ".join(str(v) for v in valid)
