#!/bin/sh
# Build one bids-flux image (a name from containers/images.txt, which is a
# target of containers/Dockerfile) from the repository's root, tag it for this
# project's registry and push it.
#
#   sh containers/build.sh [--no-push] NAME
#
# Image: $CI_REGISTRY_IMAGE/NAME:TAG, where TAG is the git tag without a
# leading "v" for tag pipelines, else the short commit. GitLab CI sets these
# variables; outside CI give CI_REGISTRY_IMAGE and CI_COMMIT_SHORT_SHA (or
# CI_COMMIT_TAG) yourself. The runner tagged `dind` runs it (images.gitlab-ci.yml).
set -eu

usage() {
    echo "usage: sh containers/build.sh [--no-push] NAME (a name from containers/images.txt)" >&2
    exit 2
}

push=yes
if [ "${1:-}" = "--no-push" ]; then
    push=no
    shift
fi
[ $# -eq 1 ] || usage
name=$1

root=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
cd "$root"

if ! grep -v '^[[:space:]]*#' containers/images.txt | grep -qx -- "$name"; then
    echo "build: unknown image '$name'" >&2
    usage
fi
# Every image is the target of its name in the one Dockerfile.
dockerfile=containers/Dockerfile

registry_image=${CI_REGISTRY_IMAGE:?set CI_REGISTRY_IMAGE (GitLab CI sets it)}
if [ -n "${CI_COMMIT_TAG:-}" ]; then
    tag=${CI_COMMIT_TAG#v}
else
    tag=${CI_COMMIT_SHORT_SHA:?set CI_COMMIT_SHORT_SHA or CI_COMMIT_TAG (GitLab CI sets them)}
fi
image="$registry_image/$name:$tag"

set -- build --pull --file "$dockerfile" --target "$name" --tag "$image" \
    --label "org.opencontainers.image.title=bids-flux $name" \
    --label "org.opencontainers.image.version=$tag" \
    --label "org.opencontainers.image.revision=${CI_COMMIT_SHA:-unknown}"
echo "build: $image from $dockerfile (target $name)"
docker "$@" .

if [ "$push" = yes ]; then
    docker push "$image"
    echo "build: pushed $image"
fi
