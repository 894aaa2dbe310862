#!/bin/sh
# MinIO set-up for bids-flux, run by the stack's one-off `minio-setup` job
# with the MinIO image's `mc`. Idempotent: every run leaves the same state.
#
# - policy bidsflux-readwrite: list, create and use the buckets whose names
#   begin with the fixed text of S3_URL_PATTERN's bucket part (everything
#   before its first "{"; the whole pattern when it has none);
# - policy bidsflux-readonly: read the same buckets (give it to researchers:
#   docs/deploy.md, "How researchers get data");
# - user <bidsflux_s3_access_key> with bidsflux-readwrite: the keys the
#   indexer and the CI jobs use.
#
# Secrets come from /run/secrets (or the folder given as the only argument);
# none is printed.
set -eu

secrets_dir=${1:-/run/secrets}
secret() { tr -d '\r\n' < "$secrets_dir/$1"; }

bucket_part=${S3_URL_PATTERN%%/*}
prefix=${bucket_part%%\{*}
if [ -z "$prefix" ]; then
    echo "minio-setup: S3_URL_PATTERN starts with a template field; the policies cover every bucket" >&2
fi
resource="arn:aws:s3:::${prefix}*"

# Wait for MinIO (this job may start first); bounded, then fail so that swarm retries.
tries=0
until mc alias set site http://minio:9000 "$(secret minio_root_user)" "$(secret minio_root_password)" \
        >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then
        echo "minio-setup: MinIO did not answer at http://minio:9000 within 5 minutes" >&2
        exit 1
    fi
    sleep 5
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/readwrite.json" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListAllMyBuckets"], "Resource": ["arn:aws:s3:::*"]},
    {"Effect": "Allow",
     "Action": ["s3:CreateBucket", "s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["${resource}"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["${resource}/*"]}
  ]
}
JSON

cat > "$work/readonly.json" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": ["${resource}"]},
    {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["${resource}/*"]}
  ]
}
JSON

mc admin policy create site bidsflux-readwrite "$work/readwrite.json" >/dev/null
mc admin policy create site bidsflux-readonly "$work/readonly.json" >/dev/null
mc admin user add site "$(secret bidsflux_s3_access_key)" "$(secret bidsflux_s3_secret_key)" >/dev/null
# Attaching a policy that is already attached is refused; that is the state we want.
mc admin policy attach site bidsflux-readwrite --user "$(secret bidsflux_s3_access_key)" >/dev/null 2>&1 \
    || mc admin user info site "$(secret bidsflux_s3_access_key)" | grep -q bidsflux-readwrite
echo "minio-setup: policies bidsflux-readwrite and bidsflux-readonly on ${resource}; bids-flux user ready"
