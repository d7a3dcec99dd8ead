#!/usr/bin/env bash
# The GPU-cluster (or CPU-cluster) equivalent of launch.sh: one process per host
# over ssh, process 0's host as the coordinator. Each host needs the checkout at
# ~/distill_jax with its .venv (pip install -e '.[gpu]'), and a shared path for
# checkpoints and outputs.
#
#   tpu_scripts/gpu_cluster_launch.sh --hosts=gpu-a,gpu-b [--port=8476] [--run-id=ID] [--dry-run] -- \
#       distill-train --config=configs/r1_distill_llama_8b.py --config.workdir=/shared/runs/r1
set -euo pipefail
usage() { sed -n '2,9p' "$0"; }
hosts=""
port=8476
rest=()
for arg in "$@"; do
  case "$arg" in
    --hosts=*) hosts="${arg#*=}" ;;
    --port=*) port="${arg#*=}" ;;
    *) rest+=("$arg") ;;
  esac
done
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "${rest[@]}"
if [[ -z "$hosts" || ${#ARGS[@]} == 0 ]]; then
  usage >&2
  exit 2
fi
IFS=',' read -r -a host_list <<< "$hosts"
RUN_ID="${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}"
log_dir="\$HOME/$LOG_ROOT/$RUN_ID"
for i in "${!host_list[@]}"; do
  host="${host_list[$i]}"
  stage="$(quote_command ".venv/bin/${ARGS[0]}" "${ARGS[@]:1}" \
    "--coordinator_address=${host_list[0]}:$port" "--num_processes=${#host_list[@]}" \
    "--process_id=$i")"
  run ssh "$host" "cd ~/$REMOTE_DIR && mkdir -p $log_dir && (nohup $stage \
> $log_dir/$host.log 2>&1 < /dev/null &)"
done
echo "run id: $RUN_ID (logs: ssh ${host_list[0]} tail -F $log_dir/${host_list[0]}.log)"
