"""One writer per dataset: advisory file locks, not sleeps."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def dataset_lock(lock_dir: Path, dataset: Path) -> Iterator[None]:
    """Hold an exclusive lock for ``dataset`` across processes and threads."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(dataset.resolve()).encode()).hexdigest()[:32]
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
