"""A file system of a few megabytes, for tests of what happens when the disk fills up."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[bool]:
    """A small file system of its own at ``path``, if this process may mount one (root)."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "candle-test", str(path)]
    mounted = subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(path)], check=True)
