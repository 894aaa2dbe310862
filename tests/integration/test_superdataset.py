"""Sessions registered in the study superdataset: concurrent writers, DataLad's view."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import datalad.api as dl

from bidsflux._locks import dataset_lock
from bidsflux.index import ensure_dataset
from bidsflux.index.superdataset import register_subdataset


def _superdataset(tmp_path: Path) -> tuple[Path, str]:
    superds = tmp_path / "study"
    ensure_dataset(superds, description="", gitattributes="", study=None, annex=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=superds, capture_output=True, text=True,
                          check=True).stdout.strip()
    return superds, head


def test_concurrent_sessions_of_one_study_are_all_registered(tmp_path: Path) -> None:
    superds, commit = _superdataset(tmp_path)
    sessions = [f"2.25.{1000 + i}" for i in range(8)]
    errors: list[BaseException] = []

    def register(path: str) -> None:
        try:
            with dataset_lock(tmp_path / "locks", superds):
                register_subdataset(superds, path, f"http://127.0.0.1:1/g/{path}.git",
                                    f"0000000{path[-4:]}-0000-0000-0000-000000000000", commit,
                                    f"register {path}", study=path)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(path,)) for path in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors

    listed = dl.subdatasets(dataset=str(superds), result_renderer="disabled", return_type="list")
    assert sorted(Path(r["path"]).name for r in listed) == sorted(sessions)
    assert all(r["gitshasum"] == commit for r in listed)
    log = subprocess.run(["git", "log", "--format=%s"], cwd=superds, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert sum(line.startswith("register ") for line in log) == len(sessions)
    assert subprocess.run(["git", "fsck", "--no-progress"], cwd=superds, capture_output=True).returncode == 0
    status = subprocess.run(["git", "status", "--porcelain"], cwd=superds, capture_output=True, text=True)
    assert status.stdout == ""


def test_registering_again_is_a_no_op_and_a_new_commit_moves_the_gitlink(tmp_path: Path) -> None:
    superds, commit = _superdataset(tmp_path)
    args = ("2.25.1", "http://127.0.0.1:1/g/s.git", "11111111-0000-0000-0000-000000000000")
    assert register_subdataset(superds, *args, commit, "first", study=None)
    assert not register_subdataset(superds, *args, commit, "again", study=None)
    (superds / "file").write_text("x")
    subprocess.run(["git", "add", "file"], cwd=superds, check=True)
    subprocess.run(["git", "commit", "-qm", "other"], cwd=superds, check=True)
    other = subprocess.run(["git", "rev-parse", "HEAD"], cwd=superds, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert register_subdataset(superds, *args, other, "moved", study=None)
    entry = subprocess.run(["git", "ls-files", "-s", "2.25.1"], cwd=superds, capture_output=True, text=True,
                           check=True).stdout.split()
    assert entry[:2] == ["160000", other]
    assert (superds / ".gitmodules").read_text().count('[submodule "2.25.1"]') == 1
