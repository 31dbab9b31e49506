"""SIGINT and SIGTERM as a request to stop: `eptk tune` checkpoints and stops, `eptk sweep` asks its runs to."""
from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def on_stop_signals(action, signals=STOP_SIGNALS) -> dict:
    """Call `action(signal name)` when one of `signals` arrives; returns the handlers it replaced, for
    `restore_handlers`. Outside the main thread (where Python allows no handler) it installs nothing."""
    def handler(signum, frame):
        action(signal.Signals(signum).name)
    previous = {}
    for sig in signals:
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        if handler is not None:  # None: a handler installed outside Python, which Python cannot put back
            signal.signal(sig, handler)
