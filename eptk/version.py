"""The eptk version, recorded in run configs and statistics metadata, and the commit of the checkout eptk runs from."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__version__ = "0.1.0"
PACKAGE = Path(__file__).resolve().parent


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.cache  # once per process: the code a process runs is the code it imported at its start
def source_commit(package: Path = PACKAGE) -> str | None:
    """The commit of the git checkout whose top folder holds `package` (10 hex digits, then `-dirty` when tracked
    files differ from it), so that a run's config.json names the code that made it; None when eptk does not run from
    its own checkout (an installed wheel, or a package folder inside some other repository)."""
    top = _git(package, "rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0 or Path(top.stdout.strip()).resolve() != package.resolve().parent:
        return None
    head = _git(package, "rev-parse", "--short=10", "HEAD")
    if head is None or head.returncode != 0:
        return None  # a repository without a commit yet
    clean = _git(package, "diff", "--quiet", "HEAD", "--")
    return head.stdout.strip() + ("" if clean is not None and clean.returncode == 0 else "-dirty")
