"""Files and folders eptk writes get the modes any tool's output gets under the umask (0644/0755 under
022, 0600/0700 under 077), although they pass through mkstemp/mkdtemp (always 0600/0700) on the way:
the run directory and its checkpoints, statistics (cache and --out), the analysis (tables, report,
plots) and an exported adapter."""
import os
import stat
from pathlib import Path

import pytest


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_everything_written_follows_the_umask(tmp_path, run_cli, monkeypatch, mask):
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    previous = os.umask(mask)
    try:
        run, stats = tmp_path / "runs" / "soft", tmp_path / "stats"
        code, _, err = run_cli("tune", "--model", "tiny", "--method", "soft", "--steps", "2", "--batch-size", "2",
                               "--eval-size", "2", "--test-size", "2", "--train-size", "8", "--quiet", "--out", run)
        assert code == 0, err
        for extra in ([], ["--out", stats]):   # the cache, then a folder of one's own
            code, _, err = run_cli("capture", "--model", "tiny", "--layers", "0,1", "--samples", "16", "--examples",
                                   "8", "--quiet", *extra)
            assert code == 0, err
        code, _, err = run_cli("analyze", run, "--out", tmp_path / "analysis", "--permutations", "5")
        assert code == 0, err
        code, _, err = run_cli("export", run, "--out", tmp_path / "adapter")
        assert code == 0, err
    finally:
        os.umask(previous)
    written = {}
    for top in ("runs", "cache", "stats", "analysis", "adapter"):
        written.update({f"{top}/{k}": v for k, v in modes(tmp_path / top).items()})
    assert any(name.endswith(".png") for name in written) and any("checkpoint/step-" in n for n in written)
    want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
    wrong = {name: oct(mode) for name, mode in written.items()
             if mode != (want_dir if (tmp_path / name).is_dir() else want_file)}
    assert not wrong, wrong
