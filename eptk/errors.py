"""Errors a user can fix (the CLI prints their one-line message and exits 2) and a requested stop."""
import signal


class EptkUsageError(Exception):
    """Bad usage or bad input. The message is one line that names the valid choices."""


class Stop(Exception):
    """A signal asked a run to stop; its checkpoint is written. Exit code 128 + the signal's number."""

    def __init__(self, signal_name: str, step: int, out):
        super().__init__(f"stopped by {signal_name} after step {step}; checkpoint written, "
                         f"continue with: eptk tune --resume {out}")
        self.exit_code = 128 + int(signal.Signals[signal_name])


def choices(valid) -> str:
    """'a, b, c' for an error message naming the valid choices."""
    return ", ".join(str(v) for v in valid)
