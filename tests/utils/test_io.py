"""Atomic writes leave the old file intact when writing fails."""
import os

import pytest

from wespeaker_lap.utils.io import atomic_open, atomic_write_text


def test_failed_write_keeps_old_content(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_creates_parent_dirs(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"


def test_file_mode_follows_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------- a full disk
def test_full_device_is_named_as_a_full_disk():
    """/dev/full fails every write with ENOSPC; torch.save reports it as 'unexpected pos' with ENOSPC chained."""
    import torch

    from wespeaker_lap.utils.errors import DiskFullError
    from wespeaker_lap.utils.io import atomic_torch_save

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with pytest.raises(DiskFullError, match="/dev/full: no space left on device"):
        atomic_write_text("/dev/full", "x" * 100_000)
    with pytest.raises(DiskFullError, match="/dev/full: no space left on device"):
        atomic_torch_save({"w": torch.zeros(10_000)}, "/dev/full")


def test_device_targets_are_written_in_place():
    atomic_write_text("/dev/null", "nothing")  # a rename over /dev/null would replace the device
    assert not os.path.isfile("/dev/null")


TINY_TMPFS = r"""
import os, subprocess, sys, torch
from wespeaker_lap.utils.errors import DiskFullError
from wespeaker_lap.utils.io import atomic_torch_save, atomic_write_text
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", sys.argv[1]], check=True)
target = os.path.join(sys.argv[1], "final_model.pt")
atomic_write_text(target, "old")
try:
    atomic_torch_save({"w": torch.zeros(1_000_000)}, target)  # 4 MB into 256 kB
except DiskFullError as err:
    print("ERROR", err)
print("LEFT", sorted(os.listdir(sys.argv[1])), open(target).read())
"""


def test_a_full_file_system_is_named_and_the_old_file_kept(tmp_path):
    """A real ENOSPC: a 256 kB tmpfs mounted in a private mount namespace (skipped where that is not allowed)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    mount = tmp_path / "small"
    mount.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["unshare", "-rm", sys.executable, "-c", TINY_TMPFS, str(mount)], env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    assert f"ERROR {mount}/final_model.pt: no space left on device while writing it" in proc.stdout
    assert "LEFT ['final_model.pt'] old" in proc.stdout  # no temporary file left, the old content intact
