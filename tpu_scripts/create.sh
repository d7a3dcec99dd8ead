#!/usr/bin/env bash
# Creates a TPU VM or pod slice — directly, or as a queued resource (--queued),
# which waits in Cloud TPU's queue until capacity frees up.
#
#   tpu_scripts/create.sh --name=r1-train --type=v4-32 --zone=us-central2-b [--queued] [--spot] [--dry-run]
set -euo pipefail
usage() { sed -n '2,6p' "$0"; }
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
version="${RUNTIME_VERSION:-$(default_runtime_version)}"

if ((QUEUED)); then
  cmd=(queued-resources create "$TPU_NAME" "--node-id=$TPU_NAME"
       "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$version")
  if ((SPOT)); then cmd+=(--spot); fi
  gcloud_tpus "${cmd[@]}"
  if ((DRY_RUN == 0)); then
    # Poll until the slice is ACTIVE (or the request failed).
    while true; do
      state="$(gcloud compute tpus queued-resources describe "$TPU_NAME" "--zone=$ZONE" \
        ${PROJECT:+"--project=$PROJECT"} --format='value(state.state)')"
      echo "queued resource $TPU_NAME: $state"
      case "$state" in
        ACTIVE) break ;;
        FAILED | SUSPENDED) exit 1 ;;
      esac
      sleep 60
    done
  fi
else
  cmd=(tpu-vm create "$TPU_NAME" "--accelerator-type=$ACCELERATOR_TYPE" "--version=$version")
  if ((SPOT)); then cmd+=(--spot); fi
  gcloud_tpus "${cmd[@]}"
fi
