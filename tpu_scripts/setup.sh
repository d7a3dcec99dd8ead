#!/usr/bin/env bash
# Installs distill_jax with jax[tpu] on every worker: ships the committed tree
# (git archive of HEAD), unpacks it to ~/distill_jax, makes a venv there and
# installs the package; then prints each worker's local TPU devices.
#
#   tpu_scripts/setup.sh --name=r1-train --zone=us-central2-b [--dry-run]
set -euo pipefail
usage() { sed -n '2,7p' "$0"; }
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_common_flags "$@"
repo="$(cd "$(dirname "$0")/.." && pwd)"
archive="${TMPDIR:-/tmp}/distill_jax-src.tar.gz"

run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
gcloud_tpus tpu-vm scp "$archive" "$TPU_NAME:distill_jax-src.tar.gz" "--worker=${WORKER:-all}"
on_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/distill_jax-src.tar.gz -C ~/$REMOTE_DIR \
&& cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
&& .venv/bin/pip install -q -e '.[tpu]' \
&& .venv/bin/python -c 'import jax; print(jax.local_devices())'"
