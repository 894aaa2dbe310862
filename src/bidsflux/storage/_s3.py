"""The one boto3 user: buckets, listings and deletions that git-annex does not do for us.

git-annex pushes the content; boto3 creates the bucket (private: nothing is
granted to anyone but its owner), lists what is really in it for
verification, and removes short objects before they are sent again.  Every
botocore error is translated here: connection failures, timeouts and 5xx
answers are transient (the worker retries with backoff), anything else
(refused keys, bucket rules) is permanent.
"""

from __future__ import annotations

from typing import Any

from ..errors import StorageError
from ._s3config import S3Config

_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed",
                    "OperationAborted", "XMinioServerNotInitialized", "XMinioStorageFull"}


class S3Client:
    """A boto3 client bound to one endpoint and its keys."""

    def __init__(self, cfg: S3Config, *, study: str | None):
        import boto3  # imported late: slow to import, and only the s3 kind needs it
        from botocore.config import Config

        self.cfg = cfg
        self.study = study
        session = boto3.session.Session()  # not the shared default session: thread safety
        self._client: Any = session.client(
            "s3", endpoint_url=cfg.endpoint, region_name=cfg.region,
            aws_access_key_id=cfg.access_key, aws_secret_access_key=cfg.secret_key,
            config=Config(
                signature_version="s3v4",  # boto3 signs host:port correctly, whatever git-annex uses
                s3={"addressing_style": "path" if cfg.path_style else "auto"},
                # Fail fast: the worker owns the backoff, and a study waits in INDEXED meanwhile.
                connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=16,
            ),
        )

    def error(self, exc: Exception, action: str) -> StorageError:
        """Translate a botocore error into a StorageError that says whether to retry."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        if isinstance(exc, ClientError):
            info = exc.response.get("Error", {})
            code = str(info.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            transient = status >= 500 or code in _TRANSIENT_CODES
            text = f"S3 {action} at {self.cfg.endpoint} failed: {code or status} {info.get('Message', '')}".strip()
            hint = None if transient else _hint(code, status)
            return StorageError(self.cfg.mask(text), study=self.study, hint=hint, transient=transient)
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return StorageError(self.cfg.mask(f"S3 {action}: {self.cfg.endpoint} unreachable ({exc})"),
                                study=self.study, transient=True)
        if isinstance(exc, BotoCoreError):
            return StorageError(self.cfg.mask(f"S3 {action} at {self.cfg.endpoint} failed: {exc}"),
                                study=self.study)
        raise exc

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` if it does not exist; True when created here."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=bucket)
            return False
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status == 403:
                self._explain_refusal(bucket)
            if status != 404:
                raise self.error(exc, f"check of bucket {bucket}") from exc
        except BotoCoreError as exc:
            raise self.error(exc, f"check of bucket {bucket}") from exc
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if self.cfg.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.cfg.region}
        try:
            # No ACL and no policy: a new bucket is private to its owner on S3 and MinIO.
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                return False  # created meanwhile by another worker
            raise self.error(exc, f"creation of bucket {bucket}") from exc
        except BotoCoreError as exc:
            raise self.error(exc, f"creation of bucket {bucket}") from exc
        return True

    def _explain_refusal(self, bucket: str) -> None:
        """A HEAD refusal has no body; a listing says why (bad keys or no access)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, f"access to bucket {bucket}") from exc

    def sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` and its size: what is really in the bucket."""
        from botocore.exceptions import BotoCoreError, ClientError

        found: dict[str, int] = {}
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, f"listing of {bucket}/{prefix}") from exc
        return found

    def delete(self, bucket: str, names: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for start in range(0, len(names), 1000):  # the API's limit per request
            batch = [{"Key": name} for name in names[start:start + 1000]]
            try:
                answer = self._client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise self.error(exc, f"deletion in {bucket}") from exc
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(f"S3 refused to delete {first.get('Key')} in {bucket}: {first.get('Code')}",
                                   study=self.study)

    def probe(self, bucket: str) -> None:
        """Raise a transient StorageError when the endpoint does not answer."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, f"check of bucket {bucket}") from exc


def _hint(code: str, status: int) -> str | None:
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch"}:
        return "check BIDSFLUX_S3_ACCESS_KEY and BIDSFLUX_S3_SECRET_KEY (and BIDSFLUX_S3_REGION)"
    if code == "AccessDenied" or status == 403:
        return "the keys may not use this bucket: check the bucket policy or S3_URL_PATTERN"
    if code in {"InvalidBucketName", "BucketAlreadyExists"}:
        return "S3_URL_PATTERN gives a bucket name this server refuses or that someone else owns"
    return None
