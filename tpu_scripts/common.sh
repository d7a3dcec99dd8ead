#!/usr/bin/env bash
# Shared settings and helpers of the TPU scripts (sourced by each, not run).
# shellcheck disable=SC2034  # the variables are read by the scripts that source this
#
# Every setting has a flag and an environment variable; flags win:
#   --name=NAME          TPU_NAME          the TPU VM / pod slice (default distill-tpu)
#   --zone=ZONE          ZONE              (default us-central2-b)
#   --project=PROJECT    PROJECT           (default: gcloud's configured project)
#   --type=TYPE          ACCELERATOR_TYPE  v4-32, v5litepod-16 (= v5e-16), ... (default v4-32)
#   --version=VERSION    RUNTIME_VERSION   TPU software version (default: by type)
#   --queued                               use a queued resource (create / delete)
#   --spot                                 Spot capacity (create)
#   --worker=W           WORKER            which workers (default all; logs: 0)
#   --run-id=ID          RUN_ID            the run's log directory name (launch / logs)
#   --dry-run                              print the commands, run nothing
# Anything else (and everything after --) is left in ARGS for the script.

TPU_NAME="${TPU_NAME:-distill-tpu}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
WORKER="${WORKER:-}"
RUN_ID="${RUN_ID:-}"
REMOTE_DIR="distill_jax"          # the checkout on every worker, under its home
LOG_ROOT="distill_logs"           # per-run log directories on every worker, under its home
QUEUED=0
SPOT=0
DRY_RUN=0
ARGS=()

parse_common_flags() {
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --queued) QUEUED=1 ;;
      --spot) SPOT=1 ;;
      --name=*) TPU_NAME="${1#*=}" ;;
      --zone=*) ZONE="${1#*=}" ;;
      --project=*) PROJECT="${1#*=}" ;;
      --type=*) ACCELERATOR_TYPE="${1#*=}" ;;
      --version=*) RUNTIME_VERSION="${1#*=}" ;;
      --worker=*) WORKER="${1#*=}" ;;
      --run-id=*) RUN_ID="${1#*=}" ;;
      -h | --help) usage; exit 0 ;;
      --) shift; ARGS+=("$@"); return ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

# The TPU software image that goes with an accelerator type.
default_runtime_version() {
  case "$ACCELERATOR_TYPE" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# Prints a command exactly (shell-quoted, copy-pastable), then runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((DRY_RUN == 0)); then
    "$@"
  fi
}

# gcloud compute tpus SUBCOMMAND... with the zone and (when set) the project.
gcloud_tpus() {
  local cmd=(gcloud compute tpus "$@" "--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    cmd+=("--project=$PROJECT")
  fi
  run "${cmd[@]}"
}

# Runs a shell command on the workers (default: all of them, at once).
on_workers() {
  gcloud_tpus tpu-vm ssh "$TPU_NAME" "--worker=${WORKER:-all}" "--command=$1"
}

# A command line as one shell-quoted string, for a remote shell.
quote_command() {
  local out="" arg
  for arg in "$@"; do
    out+=" $(printf '%q' "$arg")"
  done
  echo "${out# }"
}
