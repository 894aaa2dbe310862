"""S3 storage without a server: settings, locations, remote parameters, error classes, job environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from bidsflux import storage
from bidsflux.errors import NamingError, SettingsError, StorageError
from bidsflux.settings import Settings, load_settings
from bidsflux.storage import _annex
from bidsflux.storage._s3 import S3Client
from bidsflux.storage._s3config import (Location, read_plan, s3_config, session_location, sibling_location,
                                        write_plan)
from bidsflux.storage._s3remote import transient_failure

SECRET = "sEcReT-vAlUe-0123456789abcdef"
TAGS = {"ReferringPhysicianName": "Doe^Jane", "StudyDescription": "Doe^Memory Task", "StudyInstanceUID": "1.2.3"}


def s3(**changes: object) -> Settings:
    base = dict(storage_type="s3", s3_endpoint_url="https://minio.example.org:9000", s3_access_key="AKIDEXAMPLE",
                s3_secret_key=SECRET)
    base.update(changes)
    return Settings().replace(**base)


def test_s3_settings_load_with_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "bidsflux_s3_secret_key").write_text(SECRET + "\n")
    settings = load_settings({"BIDSFLUX_STORAGE_TYPE": "s3", "BIDSFLUX_S3_ENDPOINT_URL": "http://10.0.0.5:9000/",
                              "BIDSFLUX_S3_ACCESS_KEY": "AKID", "BIDSFLUX_S3_CHUNK_SIZE": "256MiB",
                              "BIDSFLUX_S3_PATH_STYLE": "no"}, secrets_dir=tmp_path)
    assert settings.s3_secret_key == SECRET and settings.s3_endpoint_url == "http://10.0.0.5:9000"
    assert settings.s3_chunk_size == 256 * 2**20 and settings.s3_part_size == 2**30
    assert settings.s3_path_style is False and settings.storage_jobs == 4
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(("name", "value"), [
    ("BIDSFLUX_S3_ENDPOINT_URL", "minio:9000"),
    ("BIDSFLUX_S3_ENDPOINT_URL", "https://key:secret@minio.example.org"),
    ("BIDSFLUX_S3_ENDPOINT_URL", "https://minio.example.org/bucket"),
    ("BIDSFLUX_S3_CHUNK_SIZE", "1GB"),
    ("BIDSFLUX_S3_PART_SIZE", "1MiB"),
    ("BIDSFLUX_S3_SIGNATURE", "v3"),
    ("BIDSFLUX_S3_REGION", "US East"),
    ("BIDSFLUX_STORAGE_TYPE", "minio"),
    ("BIDSFLUX_STORAGE_JOBS", "0"),
])
def test_bad_s3_settings_are_named(name: str, value: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value}, secrets_dir=tmp_path)


def test_s3_without_endpoint_or_keys_says_what_is_missing() -> None:
    with pytest.raises(StorageError, match="needs BIDSFLUX_S3_ENDPOINT_URL, BIDSFLUX_S3_ACCESS_KEY"):
        s3_config(Settings().replace(storage_type="s3", s3_secret_key=SECRET), study="1.2.3")


def test_session_location_is_the_pattern_plus_the_study_uid() -> None:
    assert session_location(s3(), TAGS, "1.2.3") == Location("bidsflux-doe-jane", "memory-task/1.2.3/")
    only_bucket = s3(s3_url_pattern="neuro-{ReferringPhysicianName}")
    assert session_location(only_bucket, TAGS, "1.2.3") == Location("neuro-doe-jane", "1.2.3/")
    hostile = dict(TAGS, StudyDescription="X^../../etc")
    assert session_location(s3(), hostile, "1.2.3").prefix == "etc/1.2.3/"
    with pytest.raises(NamingError):
        session_location(s3(s3_url_pattern="{ReferringPhysicianName}"), {"ReferringPhysicianName": "J"}, "1.2.3")


def test_sibling_location_sits_beside_the_session() -> None:
    session = Location("bidsflux-doe-jane", "memory-task/1.2.3/")
    assert sibling_location(session, "bids") == Location("bidsflux-doe-jane", "memory-task/bids/")
    assert sibling_location(Location("b-b-b", "1.2.3/"), "bids") == Location("b-b-b", "bids/")


def test_plan_is_written_once_and_read_back(tmp_path: Path) -> None:
    write_plan(tmp_path, Location("bucket-a", "p/1.2/"))
    assert read_plan(tmp_path) == Location("bucket-a", "p/1.2/")
    assert read_plan(tmp_path / "nowhere") is None


def test_remote_parameters_work_for_minio_and_seaweedfs_and_hold_no_secret() -> None:
    cfg = s3_config(s3(s3_public_url="https://data.example.org", s3_chunk_size=512 * 2**20), study=None)
    params = cfg.remote_params(Location("bkt-one", "pre/1.2/"))
    for expected in ("type=S3", "encryption=none", "autoenable=true", "host=minio.example.org", "port=9000",
                     "protocol=https", "signature=v4", "requeststyle=path", "region=us-east-1", "bucket=bkt-one",
                     "fileprefix=pre/1.2/", "partsize=1GiB", "chunk=512MiB",
                     "publicurl=https://data.example.org/bkt-one/"):
        assert expected in params
    assert not any(SECRET in p or "AKIDEXAMPLE" in p for p in params)
    assert SECRET not in repr(cfg) and cfg.mask(f"oops {SECRET}") == "oops ***"
    assert cfg.annex_env() == {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}


def test_only_the_endpoints_own_address_is_allowed_to_git_annex() -> None:
    cfg = s3_config(s3(s3_endpoint_url="http://127.0.0.1:8333"), study=None)
    assert cfg.git_options() == ["-c", "annex.security.allowed-ip-addresses=127.0.0.1"]
    assert (cfg.host, cfg.port, cfg.scheme) == ("127.0.0.1", 8333, "http")
    assert s3_config(s3(s3_endpoint_url="https://minio.example.org"), study=None).port == 443


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


@pytest.mark.parametrize(("exc", "transient"), [
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
    (_client_error(503, "SlowDown"), True),
    (_client_error(500, "InternalError"), True),
    (_client_error(403, "InvalidAccessKeyId"), False),
    (_client_error(403, "AccessDenied"), False),
    (_client_error(400, "InvalidBucketName"), False),
])
def test_botocore_errors_are_transient_only_when_worth_retrying(exc: Exception, transient: bool) -> None:
    client = S3Client(s3_config(s3(), study="1.2.3"), study="1.2.3")
    error = client.error(exc, "upload")
    assert isinstance(error, StorageError) and error.transient is transient
    assert error.study == "1.2.3" and SECRET not in str(error)
    if not transient:
        assert error.hint


@pytest.mark.parametrize(("stderr", "transient"), [
    ("HttpExceptionRequest ... (ConnectionFailure Network.Socket.connect: <socket: 11>: does not exist "
     "(Connection refused))", True),
    ("StatusCodeException (Response {responseStatus = Status {statusCode = 503, ...", True),
    ("S3Error {s3StatusCode = Status {statusCode = 403, statusMessage = \"Forbidden\"}, s3ErrorCode = "
     "\"InvalidAccessKeyId\"", False),
    ("(ConnectionRestricted \"Configuration of annex.security.allowed-ip-addresses does not allow ...\")", False),
])
def test_git_annex_failures_are_classified(stderr: str, transient: bool) -> None:
    assert transient_failure(stderr) is transient


def test_chunk_objects_follow_git_annex_naming() -> None:
    key = "SHA256E-s5242880--abc.tar"
    assert _annex.chunk_objects(key, 5242880, 2097152) == {
        "SHA256E-s5242880-S2097152-C1--abc.tar": 2097152,
        "SHA256E-s5242880-S2097152-C2--abc.tar": 2097152,
        "SHA256E-s5242880-S2097152-C3--abc.tar": 1048576,
    }
    assert _annex.chunk_objects("SHA256E-s10--x", 10, 2**20) == {"SHA256E-s10-S1048576-C1--x": 10}


def test_remote_log_is_read_latest_first(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    journal = tmp_path / ".git" / "annex" / "journal"
    journal.mkdir(parents=True)
    (journal / "remote.log").write_text(
        "u-1 bucket=old name=bidsflux-storage type=S3 timestamp=100s\n"
        "u-1 bucket=new fileprefix=a/1.2/ name=bidsflux-storage type=S3 timestamp=200s\n"
        "u-2 name=other type=directory timestamp=150s\n")
    remote = _annex.find_remote(tmp_path, "bidsflux-storage", study=None)
    assert remote is not None and remote.uuid == "u-1"
    assert (remote.get("bucket"), remote.get("fileprefix")) == ("new", "a/1.2/")
    assert _annex.find_remote(tmp_path, "absent", study=None) is None


def test_job_environment_carries_storage_settings_keys_and_git_config(tmp_path: Path) -> None:
    settings = s3(s3_endpoint_url="http://127.0.0.1:8333", workdir=tmp_path)
    env = storage.job_environment(settings, {"GIT_CONFIG_COUNT": "2"})
    assert env["BIDSFLUX_STORAGE_TYPE"] == "s3" and env["BIDSFLUX_S3_ENDPOINT_URL"] == "http://127.0.0.1:8333"
    assert env["BIDSFLUX_S3_SECRET_KEY"] == env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["BIDSFLUX_S3_PART_SIZE"] == "1GiB" and env["BIDSFLUX_S3_PATH_STYLE"] == "true"
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert (env["GIT_CONFIG_KEY_2"], env["GIT_CONFIG_VALUE_2"]) == ("annex.security.allowed-ip-addresses",
                                                                    "127.0.0.1")
    loaded = load_settings(env, secrets_dir=tmp_path)
    assert (loaded.s3_part_size, loaded.s3_secret_key) == (settings.s3_part_size, SECRET)
    local = storage.job_environment(Settings().replace(workdir=tmp_path))
    assert local["BIDSFLUX_STORAGE_LOCAL_PATH"] == str(tmp_path / "store") and "AWS_ACCESS_KEY_ID" not in local
    assert storage.store_url(settings) == "http://127.0.0.1:8333"
