#!/usr/bin/env bash
# mercure module entry point: mercure mounts the task's input and output folders and
# sets MERCURE_IN_DIR and MERCURE_OUT_DIR; the bids-flux work folder is mounted as an
# additional volume and named by BIDSFLUX_WORKDIR (module "environment" setting).
set -Eeo pipefail
exec bidsflux mercure-module
