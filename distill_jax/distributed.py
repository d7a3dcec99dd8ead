"""Multi-host runs on JAX's multi-controller runtime (`jax.distributed`).

Every host runs the same command; `initialize` joins them into one JAX
runtime, after which `jax.devices()` lists every host's devices and a mesh can
span them. How the hosts find each other:

  * explicit: a coordinator address (host:port of process 0), the number of
    processes and this process's id — GPU or CPU clusters, and the tests, which
    start several local processes with gloo collectives on CPU;
  * automatic: `jax.distributed.initialize()` with no arguments, which reads the
    environment of Cloud TPU VMs (every worker of a pod slice), SLURM and Open
    MPI.

The helpers below are the few collectives the stages need on the host side:
agreeing on a number, gathering small JSON values, a barrier, and bringing a
sharded pytree to every host (for the HF export).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from absl import logging

ENV_COORDINATOR = "DISTILL_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DISTILL_NUM_PROCESSES"
ENV_PROCESS_ID = "DISTILL_PROCESS_ID"


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Joins the multi-host runtime; returns whether it did.

    mode "auto": join when a coordinator address is given (argument or
    $DISTILL_COORDINATOR_ADDRESS), else stay single-process. "true": always join
    (with no address, JAX detects TPU VMs, SLURM and Open MPI). "false": never.
    """
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"multihost must be auto, true or false, got {mode!r}")
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if mode == "false" or (mode == "auto" and not coordinator_address):
        return False
    if coordinator_address and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator address {coordinator_address!r} given without "
            f"{'num_processes' if num_processes is None else 'process_id'}: a cluster "
            "launch needs all three (--coordinator_address, --num_processes, --process_id)")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is outside [0, {num_processes})")
    # CPU hosts talk through gloo (the default CPU client has no cross-process
    # collectives); TPU and GPU clients ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    logging.info("distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


def is_primary() -> bool:
    """Process 0 logs metrics and writes reports; the others stay quiet."""
    return jax.process_index() == 0


def agree_max(*values: int) -> tuple[int, ...]:
    """The elementwise maximum of `values` over all processes (identity on one)."""
    if jax.process_count() == 1:
        return tuple(int(v) for v in values)
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(np.asarray(values, np.int64))
    return tuple(int(v) for v in np.max(np.asarray(gathered).reshape(-1, len(values)), axis=0))


def gather_json(value: Any) -> list[Any]:
    """Every process's `value` (JSON-serializable), in process order, on every process."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(value))]
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    (longest,) = agree_max(len(data))
    padded = np.zeros((longest + 8,), np.uint8)
    padded[:8] = np.frombuffer(np.int64(len(data)).tobytes(), np.uint8)
    padded[8:8 + len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), -1)
    out = []
    for row in rows:
        n = int(np.frombuffer(row[:8].tobytes(), np.int64)[0])
        out.append(json.loads(row[8:8 + n].tobytes().decode("utf-8")))
    return out


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier of the same name."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def fetch_to_host(tree):
    """A pytree of (possibly cross-host sharded) arrays as numpy on every host.
    Collective: all processes must call it."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
