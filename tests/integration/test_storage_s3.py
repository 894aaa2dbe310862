"""S3 storage against a real SeaweedFS: push, verify, a researcher's clone, outages, tampering, secrets.

Sessions are real (the synthetic scanner's studies, indexed); the forge is
the embedded smart-HTTP forge; researchers run in fresh HOMEs with only
what docs/storage.md tells them to set.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bidsflux import storage
from bidsflux.errors import StorageError
from bidsflux.forge import ForgeServer, LocalForge
from bidsflux.index import IndexResult, index_batch
from bidsflux.ledger import Ledger, State
from bidsflux.scanner import StudySpec, study_uid
from bidsflux.settings import Settings

from ..batches import make_batch
from ..conftest import researcher_env
from ..services.seaweedfs import SeaweedFS, seaweedfs_fixture  # noqa: F401 - the ``seaweedfs`` fixture

TOKEN = "forge-token-for-s3-tests-0123456789"
SECRETS: set[str] = set()  # every key the servers here accept; the last test greps for them


def s3_settings(tmp_path: Path, server: SeaweedFS, **changes: object) -> Settings:
    SECRETS.update({server.secret_key, server.access_key})
    return Settings().replace(workdir=tmp_path / "work", storage_type="s3", s3_endpoint_url=server.endpoint,
                              s3_access_key=server.access_key, s3_secret_key=server.secret_key, **changes)


def session(settings: Settings, tmp_path: Path, seed: int, **kwargs: object) -> IndexResult:
    spec = StudySpec(seed=seed)
    result = index_batch(settings, study_uid(spec), make_batch(settings.spool_dir, spec, tmp_path / f"d{seed}",
                                                               **kwargs))
    storage.plan(settings, result.dataset, study=result.study_uid, tags=result.tags)
    return result


def objects(server: SeaweedFS, bucket: str, prefix: str) -> dict[str, int]:
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["Size"] for o in listing.get("Contents", [])}


def annex_keys(dataset: Path) -> dict[str, int]:
    out = subprocess.run(["git", "annex", "find", "--anything", "--format=${key} ${bytesize}\n"], cwd=dataset,
                         capture_output=True, text=True, check=True).stdout
    return {key: int(size) for key, size in (line.split() for line in out.splitlines())}


def publish(settings: Settings, dataset: Path, path: str) -> tuple[ForgeServer, str]:
    server = ForgeServer(settings.forge_dir, TOKEN, "127.0.0.1", 0).start()
    forge = LocalForge(settings.replace(forge_token=TOKEN), server.base_url)
    project = forge.ensure_project(path)
    forge.push(dataset, project, ["main", "git-annex"])
    return server, project.url


def researcher(home: Path, server: SeaweedFS | None) -> dict[str, str]:
    """A fresh shell set up as docs/storage.md says: keys in the environment, the endpoint's address allowed."""
    env = researcher_env(home)
    subprocess.run(["git", "config", "--global", "annex.security.allowed-ip-addresses", "127.0.0.1"], env=env,
                   check=True)
    if server is not None:
        env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)


def test_push_verifies_and_a_researcher_clones_and_gets_from_s3(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs)
    result = session(settings, tmp_path, 41)
    keys = annex_keys(result.dataset)

    stored = storage.push(settings, result.dataset, study=result.study_uid)

    assert (stored.keys, stored.bytes) == (len(keys), sum(keys.values())) == (6, stored.bytes)
    prefix = f"demo/{result.study_uid}/"
    seen = objects(seaweedfs, "bidsflux-doe-jane", prefix)
    assert {k: seen[k] for k in keys} == keys
    assert storage.verify(settings, result.dataset, study=result.study_uid) == stored
    # Private by default: nobody without keys reads the content.
    with pytest.raises(Exception, match="AccessDenied|Forbidden|403"):
        seaweedfs.client(anonymous=True).get_object(Bucket="bidsflux-doe-jane", Key=prefix + next(iter(keys)))
    assert not (result.dataset / ".git" / "annex" / "creds").exists() or not any(
        (result.dataset / ".git" / "annex" / "creds").iterdir())

    forge, url = publish(settings, result.dataset, f"Doe-Jane/Demo/sourcedata/dicoms/{result.study_uid}")
    try:
        env = researcher(tmp_path / "home", seaweedfs)
        clone = tmp_path / "clone"
        cloned = run(["datalad", "clone", url, str(clone)], tmp_path, env)
        assert cloned.returncode == 0, cloned.stderr
        got = run(["datalad", "get", "."], clone, env)
        assert got.returncode == 0, got.stdout + got.stderr
        assert run(["git", "annex", "fsck", "--quiet"], clone, env).returncode == 0
        fsck = run(["git", "annex", "fsck", "--from", settings.storage_remote, "--fast", "--quiet"], clone, env)
        assert fsck.returncode == 0, fsck.stderr
        assert sorted(p.name for p in clone.glob("*.tar")) == sorted(p.name for p in result.dataset.glob("*.tar"))

        # Without keys, a private dataset's content stays out of reach.
        stranger = researcher(tmp_path / "home2", None)
        other = tmp_path / "other"
        assert run(["datalad", "clone", url, str(other)], tmp_path, stranger).returncode == 0
        # (git-annex directly: DataLad's own retries take many seconds to say the same.)
        denied = run(["git", "annex", "get", "."], other, stranger)
        assert denied.returncode != 0 and not list(other.glob("*.tar"))[0].exists()
    finally:
        forge.stop()


def test_a_routing_rules_s3_pattern_decides_where_the_worker_stores_a_study(tmp_path: Path,
                                                                            seaweedfs: SeaweedFS) -> None:
    import json

    from bidsflux.embedded import Service

    # runner=external: the worker stops at PUBLISHED, after storing and verifying.
    settings = s3_settings(tmp_path, seaweedfs, forge_port=0, runner="external")
    service = Service(settings)
    service.forge_server.start()
    routed, default = StudySpec(seed=141), StudySpec(seed=142)  # seeds no other test here uses (one store)
    try:
        for spec, route in ((routed, {"rule": "memory-lab", "s3_url_pattern": "memory-lab/{StudyDescriptionPath[1]}"}),
                            (default, {"rule": "default"})):
            batch = make_batch(service.spool.root, spec, tmp_path / f"d{spec.seed}", only_series={1})
            (batch / "route.json").write_text(json.dumps(route))
        while service.step():
            pass
        for spec in (routed, default):
            record = service.ledger.require(study_uid(spec))
            assert record.state is State.PUBLISHED, (record.state, record.error)
    finally:
        service.forge_server.stop()
        service.ledger.close()

    uid = study_uid(routed)
    assert objects(seaweedfs, "memory-lab", f"demo/{uid}/"), "the rule's bucket holds the routed study"
    assert not objects(seaweedfs, "bidsflux-doe-jane", f"demo/{uid}/")
    assert objects(seaweedfs, "bidsflux-doe-jane", f"demo/{study_uid(default)}/"), "the setting's pattern otherwise"


def test_public_dataset_is_got_without_credentials(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs, s3_url_pattern="public-test/{StudyDescriptionPath[1]}",
                           s3_public_url=seaweedfs.endpoint)
    result = session(settings, tmp_path, 42, only_series={1, 2})
    storage.push(settings, result.dataset, study=result.study_uid)
    forge, url = publish(settings, result.dataset, "open/session")
    try:
        env = researcher(tmp_path / "home", None)
        clone = tmp_path / "clone"
        assert run(["datalad", "clone", url, str(clone)], tmp_path, env).returncode == 0
        got = run(["datalad", "get", "."], clone, env)
        assert got.returncode == 0, got.stdout + got.stderr
        assert run(["git", "annex", "fsck", "--quiet"], clone, env).returncode == 0
    finally:
        forge.stop()


def test_a_job_clone_passes_the_verified_remote_gate_only_for_the_configured_endpoint(
        tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs)
    result = session(settings, tmp_path, 43, only_series={1})
    storage.push(settings, result.dataset, study=result.study_uid)
    forge, url = publish(settings, result.dataset, "gate/session")
    try:
        clone = tmp_path / "job"
        subprocess.run(["datalad", "clone", url, str(clone)], check=True, capture_output=True)
        (clone / "extra.tar").write_bytes(os.urandom(300_000))
        subprocess.run(["datalad", "save", "-m", "extra", "-d", str(clone)], check=True, capture_output=True)

        elsewhere = settings.replace(s3_endpoint_url="http://127.0.0.1:1")
        with pytest.raises(StorageError, match="points at http://127.0.0.1:"):
            storage.push(elsewhere, clone, study=result.study_uid)

        stored = storage.push(settings, clone, study=result.study_uid)
        assert stored.keys == 2
        assert len(objects(seaweedfs, "bidsflux-doe-jane", f"demo/{result.study_uid}/")) == 3  # + annex-uuid
    finally:
        forge.stop()


def test_store_stopped_mid_push_and_restarted_ends_stored_with_nothing_missing(tmp_path: Path) -> None:
    with SeaweedFS(tmp_path / "s3") as server:
        settings = s3_settings(tmp_path, server)
        result = session(settings, tmp_path, 44, only_series={1})
        for n in range(8):  # enough bytes that the push is still going when the store goes away
            (result.dataset / f"big-{n}.tar").write_bytes(os.urandom(24 * 2**20))
        subprocess.run(["datalad", "save", "-m", "big", "-d", str(result.dataset)], check=True, capture_output=True)
        ledger = Ledger(tmp_path / "ledger.sqlite")
        ledger.transition(result.study_uid, State.INDEXED)
        errors: list[StorageError] = []

        def worker() -> None:  # what the embedded worker does: retry transient errors with backoff
            for attempt in range(60):
                try:
                    stored = storage.push(settings, result.dataset, study=result.study_uid, jobs=1)
                except StorageError as exc:
                    errors.append(exc)
                    ledger.transition(result.study_uid, State.INDEXED, error=str(exc), attempt=attempt + 1)
                    if not exc.transient:
                        return
                    time.sleep(min(0.1 * 2 ** attempt, 1.0))
                    continue
                ledger.transition(result.study_uid, State.STORED, counts={"keys": stored.keys})
                return

        thread = threading.Thread(target=worker)
        prefix = f"demo/{result.study_uid}/"
        thread.start()
        deadline = time.monotonic() + 60
        while not any(k.startswith("SHA256E") for k in _quiet_objects(server, prefix)):
            assert time.monotonic() < deadline and thread.is_alive(), "the push never started"
            time.sleep(0.02)
        server.stop(kill=True)
        while not errors and thread.is_alive():
            time.sleep(0.05)
        assert ledger.require(result.study_uid).state is State.INDEXED  # waits, not FAILED
        server.start()
        thread.join(timeout=300)

        record = ledger.require(result.study_uid)
        assert record.state is State.STORED, record.error
        assert errors and all(e.transient for e in errors), [str(e) for e in errors]
        keys = annex_keys(result.dataset)
        seen = objects(server, "bidsflux-doe-jane", prefix)
        assert {k: seen.get(k) for k in keys} == keys
        ledger.close()


def _quiet_objects(server: SeaweedFS, prefix: str) -> dict[str, int]:
    try:
        return objects(server, "bidsflux-doe-jane", prefix)
    except Exception:  # noqa: BLE001 - bucket not there yet
        return {}


def test_objects_deleted_or_truncated_behind_git_annex_are_sent_again(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs)
    result = session(settings, tmp_path, 45)
    storage.push(settings, result.dataset, study=result.study_uid)
    prefix = f"demo/{result.study_uid}/"
    keys = annex_keys(result.dataset)
    deleted, truncated = sorted(keys)[:2]
    client = seaweedfs.client()
    client.delete_object(Bucket="bidsflux-doe-jane", Key=prefix + deleted)
    client.put_object(Bucket="bidsflux-doe-jane", Key=prefix + truncated, Body=b"short")

    with pytest.raises(StorageError, match="2 of 6 archives are missing or short") as caught:
        storage.verify(settings, result.dataset, study=result.study_uid)
    assert not caught.value.transient
    # git-annex still believes it; only looking at the bucket says otherwise.
    whereis = subprocess.run(["git", "annex", "whereis", "--key", deleted], cwd=result.dataset,
                             capture_output=True, text=True).stdout
    assert settings.storage_remote in whereis

    stored = storage.push(settings, result.dataset, study=result.study_uid)
    assert stored.keys == 6
    seen = objects(seaweedfs, "bidsflux-doe-jane", prefix)
    assert {k: seen[k] for k in keys} == keys


def test_lost_content_that_cannot_be_sent_again_fails_never_stored(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs)
    result = session(settings, tmp_path, 46, only_series={1, 2})
    storage.push(settings, result.dataset, study=result.study_uid)
    key = sorted(annex_keys(result.dataset))[0]
    seaweedfs.client().delete_object(Bucket="bidsflux-doe-jane", Key=f"demo/{result.study_uid}/{key}")
    subprocess.run(["git", "annex", "drop", "--force", "--key", key], cwd=result.dataset, check=True,
                   capture_output=True)
    with pytest.raises(StorageError, match="not here to send again") as caught:
        storage.push(settings, result.dataset, study=result.study_uid)
    assert not caught.value.transient


def test_unreachable_store_is_transient_and_bad_keys_are_permanent(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs)
    result = session(settings, tmp_path, 47, only_series={1})
    with pytest.raises(StorageError) as down:
        storage.push(settings.replace(s3_endpoint_url="http://127.0.0.1:1"), result.dataset,
                     study=result.study_uid)
    assert down.value.transient, str(down.value)
    wrong = "wrong-" + seaweedfs.secret_key[::-1]
    SECRETS.add(wrong)
    with pytest.raises(StorageError) as refused:
        storage.push(settings.replace(s3_secret_key=wrong), result.dataset, study=result.study_uid)
    assert not refused.value.transient
    assert "BIDSFLUX_S3_SECRET_KEY" in str(refused.value)
    for error in (down.value, refused.value):
        assert not any(secret in str(error) for secret in SECRETS)
    with pytest.raises(StorageError, match="needs BIDSFLUX_S3_ACCESS_KEY"):
        storage.push(settings.replace(s3_access_key=None), result.dataset, study=result.study_uid)


def test_signature_v2_pushes_and_reads_back(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    settings = s3_settings(tmp_path, seaweedfs, s3_signature="v2")
    result = session(settings, tmp_path, 48, only_series={1, 2})
    assert storage.push(settings, result.dataset, study=result.study_uid).keys == 2
    # Read back through git-annex itself: a full fsck downloads every key and checks its checksum.
    env = dict(os.environ, AWS_ACCESS_KEY_ID=seaweedfs.access_key, AWS_SECRET_ACCESS_KEY=seaweedfs.secret_key)
    fsck = run(["git", "-c", "annex.security.allowed-ip-addresses=127.0.0.1", "annex", "fsck", "--from",
                settings.storage_remote, "--quiet"], result.dataset, env)
    assert fsck.returncode == 0, fsck.stderr


def test_no_secret_in_any_log_or_config_file_written_by_these_tests(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS) -> None:
    """Last in this module: every file under the session's temporary root, every git-annex branch.

    It makes its own push, job-like clone and researcher clone first, so it checks something even alone.
    """
    settings = s3_settings(tmp_path, seaweedfs)
    result = session(settings, tmp_path, 49, only_series={1})
    storage.push(settings, result.dataset, study=result.study_uid)
    forge, url = publish(settings, result.dataset, "secrets/session")
    try:
        env = researcher(tmp_path / "home", seaweedfs)
        assert run(["datalad", "clone", url, str(tmp_path / "clone")], tmp_path, env).returncode == 0
        assert run(["datalad", "get", "."], tmp_path / "clone", env).returncode == 0
        subprocess.run(["datalad", "clone", url, str(tmp_path / "job")], check=True, capture_output=True)
        storage.push(settings, tmp_path / "job", study=result.study_uid)  # a clone: the verified-remote gate
    finally:
        forge.stop()
    root = tmp_path_factory.getbasetemp()
    # A test server's own key list and object store hold what it was given; everything else is ours.
    servers = [p.parent / name for p in root.rglob("identities.json") for name in ("identities.json", "data")]
    checked = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink() or any(path.is_relative_to(s) for s in servers):
            continue
        if path.stat().st_size > 8 * 2**20:
            continue  # annexed archives and server volumes: DICOM bytes
        text = path.read_bytes()
        found = [s for s in SECRETS if s.encode() in text]
        assert not found, f"secret found in {path}"
        checked += 1
    for git_dir in root.rglob(".git"):
        if (git_dir / "annex").is_dir():
            branch = subprocess.run(["git", "log", "-p", "git-annex", "--"], cwd=git_dir.parent,
                                    capture_output=True, text=True).stdout
            config = subprocess.run(["git", "config", "--list"], cwd=git_dir.parent, capture_output=True,
                                    text=True).stdout
            assert not any(s in branch + config for s in SECRETS), git_dir
    assert checked > 50
