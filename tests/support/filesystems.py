"""A small file system of the test's own, to break under a running server.

`small_file_system` makes an ext4 image of a few MiB, loop-mounts it and
yields the mount point: the database placed there can be made read-only
(`immutable`), starved of space (`fill`) or deleted, without touching the
machine's own disks. It needs root (mount, loop devices, chattr); without it
the test skips locally and fails under CI=true, like a missing PostgreSQL.

Why ext4 and `chattr +i` for "read-only": the tests run as root, and root
ignores `chmod` (CAP_DAC_OVERRIDE), while a read-only remount is refused
("mount point is busy") as long as a process has a file open for writing --
which a running SQLite server always has. The immutable flag binds root too,
and ext4 checks it on every write, through descriptors opened before it was
set as well (tmpfs does not); removing it is the repair.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support.postgres import missing

MEBIBYTE = 1024 * 1024
COMMAND_TIMEOUT_SECONDS = 30
FILL_CHUNK_BYTES = MEBIBYTE
FILL_LAST_CHUNK_BYTES = 4096


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, check=False
    )


@contextlib.contextmanager
def small_file_system(workdir: Path, size_mebibytes: int) -> Iterator[Path]:
    """An ext4 file system of `size_mebibytes`, mounted under `workdir`, removed afterwards."""
    if os.geteuid() != 0:
        missing("mounting a file system of the test's own needs root")
    image = workdir / f"fs-{uuid.uuid4().hex[:8]}.ext4"
    mount_point = workdir / image.stem
    mount_point.mkdir()
    with image.open("wb") as handle:
        handle.truncate(size_mebibytes * MEBIBYTE)
    made = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))  # -m 0: no blocks kept for root
    if made.returncode != 0:
        missing(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop", str(image), str(mount_point))
    if mounted.returncode != 0:
        missing(f"cannot loop-mount a file system here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        _run("chattr", "-R", "-i", str(mount_point))
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))  # a server still holding files
        image.unlink(missing_ok=True)


def immutable(*paths: Path, on: bool) -> None:
    """`chattr +i` (on) or `-i` (off): no write, not even by root or an open descriptor."""
    result = _run("chattr", "+i" if on else "-i", *(str(path) for path in paths))
    if result.returncode != 0:
        raise RuntimeError(f"chattr failed: {result.stderr.strip()}")


def fill(directory: Path) -> Path:
    """Write a file until the file system has no block left; delete it to free them."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as handle:
        for size in (FILL_CHUNK_BYTES, FILL_LAST_CHUNK_BYTES, 1):
            chunk = b"\0" * size
            while True:
                try:
                    handle.write(chunk)
                except OSError as error:
                    if error.errno != errno.ENOSPC:
                        raise
                    break
        with contextlib.suppress(OSError):
            os.fsync(handle.fileno())
    return filler
