"""What a run's config.json records of what made it. The commit of the eptk checkout (versions.eptk_commit), so a
rerun can take that code: the commit of the repository whose top folder holds the package, `-dirty` when tracked
files differ from it, and nothing when the package does not sit at the top of a repository (an installed wheel).
The CPU (versions.cpu), since float rounding and so a run's exact numbers can differ between machines."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from eptk.config import versions
from eptk.version import PACKAGE, source_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def git(*args, cwd) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def checkout(top: Path) -> Path:
    """A repository with a package folder `eptk` at its top, committed once."""
    (top / "eptk").mkdir(parents=True)
    (top / "eptk" / "train.py").write_text("STEP = 1\n")
    (top / "README.md").write_text("eptk\n")
    git("init", "-q", cwd=top)
    git("add", "-A", cwd=top)
    git("commit", "-q", "-m", "start", cwd=top)
    return top / "eptk"


def test_the_commit_of_the_checkout_then_dirty_once_a_tracked_file_changes(tmp_path):
    package = checkout(tmp_path / "repo")
    head = git("rev-parse", "HEAD", cwd=package)
    assert source_commit(package) == head[:10]
    (package.parent / "README.md").write_text("edited\n")       # any tracked file: the code may differ
    source_commit.cache_clear()
    assert source_commit(package) == head[:10] + "-dirty"
    git("commit", "-q", "-am", "edit", cwd=package)
    (package / "notes.txt").write_text("untracked")               # untracked files are not the checkout's
    source_commit.cache_clear()
    assert source_commit(package) == git("rev-parse", "--short=10", "HEAD", cwd=package)


def test_nothing_when_the_package_is_not_the_top_of_its_own_repository(tmp_path):
    assert source_commit(tmp_path) is None                        # no repository at all
    inside = checkout(tmp_path / "other") / "site-packages" / "eptk"   # a wheel inside someone's repository
    inside.mkdir(parents=True)
    assert source_commit(inside) is None
    empty = tmp_path / "empty"
    (empty / "eptk").mkdir(parents=True)
    git("init", "-q", cwd=empty)                                  # a repository with no commit yet
    assert source_commit(empty / "eptk") is None


def test_a_run_records_the_commit_it_was_made_by():
    recorded = versions().get("eptk_commit")
    if source_commit(PACKAGE) is None:
        assert recorded is None
        return
    assert recorded == source_commit(PACKAGE)
    assert git("rev-parse", "--short=10", "HEAD", cwd=PACKAGE) == recorded.removesuffix("-dirty")


def test_a_run_records_the_cpu_it_computed_on():
    recorded = versions()["cpu"]
    assert recorded.endswith(", " + torch.backends.cpu.get_cpu_capability())
    info = Path("/proc/cpuinfo")
    if info.is_file() and "model name" in info.read_text():
        model = next(line for line in info.read_text().splitlines() if line.startswith("model name"))
        assert recorded.startswith(model.split(":", 1)[1].strip() + ", ")
