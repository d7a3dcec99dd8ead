#!/usr/bin/env bash
# Starts one stage on every worker with the same command line (the multi-host
# runtime connects them: --multihost=true is added), detached, each worker
# logging to ~/distill_logs/RUN_ID/<hostname>.log. Prints the run id.
#
#   tpu_scripts/launch.sh --name=r1-train [--run-id=ID] [--dry-run] -- \
#       distill-train --config=configs/r1_distill_qwen_1p5b.py --config.workdir=/mnt/runs/r1
set -euo pipefail
usage() { sed -n '2,8p' "$0"; }
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
if ((${#ARGS[@]} == 0)); then
  echo "launch.sh: give the stage command after --, e.g. -- distill-train --config=..." >&2
  exit 2
fi
case "${ARGS[0]}" in
  distill-*) ;;
  *) echo "launch.sh: expected a distill-* command, got '${ARGS[0]}'" >&2; exit 2 ;;
esac
RUN_ID="${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}"
stage="$(quote_command ".venv/bin/${ARGS[0]}" "${ARGS[@]:1}" --multihost=true)"
log_dir="\$HOME/$LOG_ROOT/$RUN_ID"
on_workers "cd ~/$REMOTE_DIR && mkdir -p $log_dir && (nohup $stage \
> $log_dir/\$(hostname).log 2>&1 < /dev/null &)"
echo "run id: $RUN_ID (logs: tpu_scripts/logs.sh --name=$TPU_NAME --run-id=$RUN_ID)"
