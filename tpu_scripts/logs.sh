#!/usr/bin/env bash
# Follows a run's log on one worker (default worker 0, the one that prints
# progress and metrics); without --run-id, the newest run.
#
#   tpu_scripts/logs.sh --name=r1-train [--run-id=ID] [--worker=N] [--dry-run]
set -euo pipefail
usage() { sed -n '2,6p' "$0"; }
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
WORKER="${WORKER:-0}"
if [[ -n "$RUN_ID" ]]; then
  dir="\$HOME/$LOG_ROOT/$RUN_ID"
else
  dir="\$HOME/$LOG_ROOT/\$(ls -t \$HOME/$LOG_ROOT | head -n 1)"
fi
on_workers "tail -n 200 -F $dir/*.log"
