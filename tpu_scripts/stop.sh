#!/usr/bin/env bash
# Stops the running stage on every worker (SIGINT, then SIGKILL after a grace
# period). Stages resume from their last checkpoint or shard when relaunched.
#
#   tpu_scripts/stop.sh --name=r1-train [--dry-run]
set -euo pipefail
usage() { sed -n '2,6p' "$0"; }
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
# "[.]venv" matches the stage's command line but not this shell's own.
on_workers "pkill -INT -f '[.]venv/bin/distill-' ; sleep 30 ; pkill -KILL -f '[.]venv/bin/distill-' ; true"
