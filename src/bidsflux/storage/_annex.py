"""git-annex facts the store stage reads: keys, remote configuration, chunk logs.

Both kinds of store verify by looking at the store itself, never at
git-annex's location log; these helpers tell them what to look for.  Calls
are batched (one ``examinekey --batch``, one ``cat-file --batch``) because a
BIDS dataset can hold thousands of keys.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .._proc import run, tool_env
from ..errors import StorageError

_KEY_SIZE = re.compile(r"^[A-Z0-9]+-s(\d+)-")


@dataclass(frozen=True)
class RemoteConfig:
    """One special remote as recorded in the git-annex branch (``remote.log``)."""

    uuid: str
    fields: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name, default)


def key_size(key: str, *, study: str | None) -> int:
    match = _KEY_SIZE.match(key)
    if not match:
        # Every key bids-flux makes is SHA256E with a size; one without cannot be checked.
        raise StorageError(f"annex key without size: {key}", study=study)
    return int(match.group(1))


def annexed_keys(dataset: Path, *, study: str | None) -> list[str]:
    """Every key the checked-out tree points at, whether its content is here or not."""
    out = run(["git", "annex", "find", "--anything", "--format=${key}\n"], cwd=dataset,
              error=StorageError, study=study).stdout
    return sorted(set(out.split()))


def present_keys(dataset: Path, *, study: str | None) -> set[str]:
    """Keys whose content is in this repository (so they can be sent again)."""
    out = run(["git", "annex", "find", "--format=${key}\n"], cwd=dataset, error=StorageError,
              study=study).stdout
    return set(out.split())


def _batch(args: list[str], lines: list[str], dataset: Path, *, study: str | None) -> list[str]:
    """Feed ``lines`` to a ``--batch`` command; its answer lines."""
    if not lines:
        return []
    return run(args, cwd=dataset, input=("\n".join(lines) + "\n").encode(), error=StorageError,
               study=study).stdout.splitlines()


def hash_dirs(dataset: Path, keys: list[str], *, fmt: str, study: str | None) -> dict[str, str]:
    """``${hashdirlower}`` or ``${hashdirmixed}`` of each key."""
    answers = _batch(["git", "annex", "examinekey", "--batch", f"--format=${{{fmt}}}\n"], keys, dataset,
                     study=study)
    return dict(zip(keys, answers, strict=True))


def _branch_files(dataset: Path, paths: list[str], *, study: str | None) -> dict[str, str]:
    """Contents of files in the git-annex branch (missing ones left out)."""
    if not paths:
        return {}
    proc = subprocess.run(["git", "cat-file", "--batch"], cwd=dataset, env=tool_env(),
                          input="".join(f"git-annex:{p}\n" for p in paths).encode(), capture_output=True,
                          check=False)
    if proc.returncode != 0:
        raise StorageError(f"cannot read the git-annex branch: {proc.stderr.decode(errors='replace')[-300:]}",
                           study=study)
    data, result, pos = proc.stdout, {}, 0
    for path in paths:
        end = data.index(b"\n", pos)
        header = data[pos:end].decode()
        pos = end + 1
        if header.endswith(" missing"):
            continue
        size = int(header.rsplit(" ", 1)[1])
        result[path] = data[pos:pos + size].decode(errors="replace")
        pos += size + 1
    return result


def remote_configs(dataset: Path, *, study: str | None) -> list[RemoteConfig]:
    """Every special remote recorded in ``remote.log`` (the journal first, where one is pending)."""
    journal = dataset / ".git" / "annex" / "journal" / "remote.log"
    text = journal.read_text() if journal.is_file() else _branch_files(dataset, ["remote.log"],
                                                                       study=study).get("remote.log", "")
    latest: dict[str, tuple[float, dict[str, str]]] = {}
    for line in text.splitlines():
        uuid, _, rest = line.partition(" ")
        fields = dict(part.split("=", 1) for part in rest.split() if "=" in part)
        stamp = float(fields.pop("timestamp", "0s").rstrip("s") or 0)
        if uuid and stamp >= latest.get(uuid, (-1.0, {}))[0]:
            latest[uuid] = (stamp, fields)
    return [RemoteConfig(uuid, fields) for uuid, (_, fields) in sorted(latest.items())]


def find_remote(dataset: Path, name: str, *, study: str | None) -> RemoteConfig | None:
    """The special remote called ``name``: the enabled one here, else the one the branch knows."""
    uuid = enabled_uuid(dataset, name)
    configs = remote_configs(dataset, study=study)
    for config in configs:
        if (uuid and config.uuid == uuid) or (not uuid and config.get("name") == name):
            return config
    return None


def enabled_uuid(dataset: Path, name: str) -> str:
    return run(["git", "config", f"remote.{name}.annex-uuid"], cwd=dataset, check=False).stdout.strip()


def chunk_layouts(dataset: Path, keys: list[str], uuid: str, *, study: str | None) -> dict[str, list[int]]:
    """Chunk sizes each key was stored with on remote ``uuid`` (from ``<key>.log.cnk``)."""
    dirs = hash_dirs(dataset, keys, fmt="hashdirlower", study=study)
    paths = {key: f"{dirs[key]}{key}.log.cnk" for key in keys}
    logs = _branch_files(dataset, list(paths.values()), study=study)
    layouts: dict[str, list[int]] = {}
    for key, path in paths.items():
        sizes = []
        for line in logs.get(path, "").splitlines():
            # "<timestamp>s <uuid>:<chunksize> <chunkcount>"; count 0 means removed.
            parts = line.split()
            if len(parts) == 3 and parts[1].startswith(uuid + ":") and parts[2] != "0":
                sizes.append(int(parts[1].rsplit(":", 1)[1]))
        if sizes:
            layouts[key] = sizes
    return layouts


def chunk_objects(key: str, size: int, chunk_size: int) -> dict[str, int]:
    """Names and sizes of the chunk objects of ``key`` (``KEY-S<chunk>-C<n>``)."""
    head, sep, tail = key.partition("--")
    count = max(1, -(-size // chunk_size))
    return {f"{head}-S{chunk_size}-C{n}{sep}{tail}": min(chunk_size, size - (n - 1) * chunk_size)
            for n in range(1, count + 1)}


def mark_absent(dataset: Path, keys: list[str], uuid: str, *, study: str | None) -> None:
    """Tell git-annex that ``uuid`` does not have ``keys`` so that the next copy sends them."""
    if keys:
        _batch(["git", "annex", "setpresentkey", "--batch"], [f"{k} {uuid} 0" for k in keys], dataset,
               study=study)


def forget_cached_credentials(dataset: Path, uuid: str) -> None:
    """Remove git-annex's on-disk copy of the S3 keys.

    ``initremote``/``enableremote`` cache the keys from the environment under
    ``.git/annex/creds/``; bids-flux passes them in the environment of every
    call instead, so no secret is left at rest in a dataset.
    """
    cached = dataset / ".git" / "annex" / "creds" / uuid
    if cached.exists():
        cached.unlink()
