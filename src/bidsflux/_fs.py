"""File-system helpers shared by the stages."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def remove_tree(path: Path) -> None:
    """Remove a folder even where git-annex made parts of it read-only."""

    def make_writable(func: Callable[..., object], target: str, _exc: object) -> None:
        os.chmod(os.path.dirname(target), 0o755)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, 0o755)
        func(target)

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=make_writable)
