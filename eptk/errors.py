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


def check_range(option: str, value, lowest, highest, *, above: bool = False) -> None:
    """A numeric option inside [lowest, highest] (lowest itself excluded when `above`): otherwise a usage
    error naming the valid range. NaN and infinities are never inside."""
    import math

    number = float(value) if isinstance(value, (int, float)) and abs(value) < 1e308 else float("inf")
    low_ok = number > lowest if above else number >= lowest
    if math.isfinite(number) and low_ok and number <= highest:
        return
    kind = "an integer" if isinstance(lowest, int) and isinstance(highest, int) and not above else "a number"
    low = f"above {lowest}" if above else f"from {lowest}"
    high = f"and at most {highest}" if above else f"to {highest}"
    raise EptkUsageError(f"{option} must be {kind} {low} {high} (got {value})")


def check_choice(option: str, value, valid) -> None:
    """`value` one of `valid`: otherwise a usage error naming the option and the valid choices."""
    if value not in valid:
        raise EptkUsageError(f"unknown {option} {value!r}; valid: {choices(valid)}")


class NothingToDo(Exception):
    """The work a command was asked for is already done: the CLI prints the message and exits 0."""
