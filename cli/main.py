"""`eptk` entry point: exit 0 on success, 2 on bad usage or input (one line), 1 on internal failure."""
from __future__ import annotations

import os
import sys

from . import analyze, capture, export, priors, reproduce, sweep, tune  # noqa: F401  (each registers its commands)
from .app import app


def main(argv=None) -> int:
    from eptk.errors import EptkUsageError, Stop

    _quiet_libraries()
    try:
        code = app(args=argv, standalone_mode=False)  # a command's `raise typer.Exit(n)` comes back as n
    except EptkUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stop as exc:
        print(f"eptk: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Typer may vendor its own click: recognise click's exceptions by class name.
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "UsageError" in kinds:
            print(f"error: {exc.format_message().splitlines()[0]}", file=sys.stderr)
            return 2
        if "Abort" in kinds:
            print("aborted", file=sys.stderr)
            return 130
        if "Exit" in kinds:
            return getattr(exc, "exit_code", 0)
        if os.environ.get("EPTK_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"internal error: {type(exc).__name__}: {first} (set EPTK_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _quiet_libraries() -> None:
    """Errors only from transformers, no progress bars: set now if it is loaded, else when it loads (`eptk
    --help` must not import it)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


if __name__ == "__main__":
    sys.exit(main())
