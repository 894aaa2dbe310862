#!/usr/bin/env bash
# Debian packages the tests and the demo need. Installs only what is missing,
# so a second run does nothing.
set -euo pipefail
missing=()
[ -x /usr/bin/storescu ] || missing+=(dcmtk)
command -v git >/dev/null || missing+=(git)
# Deployment-file checks: nginx -t on the edge config, envsubst, openssl for test certificates.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v envsubst >/dev/null || missing+=(gettext-base)
command -v openssl >/dev/null || missing+=(openssl)
# gitlab-ci-local (npm, pinned in package-lock.json) runs the CI templates in the tests.
command -v npm >/dev/null || missing+=(nodejs npm)
command -v rsync >/dev/null || missing+=(rsync)  # gitlab-ci-local copies the checkout with it
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-system: need root to install: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
fi
echo "install-system: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
