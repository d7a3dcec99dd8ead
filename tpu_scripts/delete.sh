#!/usr/bin/env bash
# Deletes the TPU VM (or, with --queued, the queued resource and its slice).
#
#   tpu_scripts/delete.sh --name=r1-train [--queued] [--dry-run]
set -euo pipefail
usage() { sed -n '2,5p' "$0"; }
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
if ((QUEUED)); then
  gcloud_tpus queued-resources delete "$TPU_NAME" --force --quiet
else
  gcloud_tpus tpu-vm delete "$TPU_NAME" --quiet
fi
