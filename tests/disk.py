"""What tests compare to say "nothing on disk changed": every path under a folder with its mode, and every
file's bytes (modification times are left out: reading a lock to test it changes none, writing would)."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path


def snapshot(root: Path) -> dict:
    root = Path(root)
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        out[str(path.relative_to(root))] = (mode, path.read_bytes() if path.is_file() else None)
    return out


def unprivileged() -> list[str]:
    """A command prefix that runs a program without the power to ignore file permissions: as root, through
    `setpriv` dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set (root can write into
    a 0555 folder otherwise, so chmod alone proves nothing); as another user, nothing. None when root
    cannot drop them here."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", "0"],
                           capture_output=True)
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if probe.returncode == 0 else None
