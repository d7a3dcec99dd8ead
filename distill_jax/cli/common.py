"""What every `distill-*` command shares: an ml_collections config file from
`--config` (fields overridable as `--config.a.b=value`), quiet logging unless
`--verbosity` is given, joining a multi-host run when asked (see
`distill_jax.distributed`), and one library call with the config."""
from __future__ import annotations

import importlib

from absl import app, flags, logging
from ml_collections import config_flags

from distill_jax import distributed


def run_stage(module: str, function: str) -> None:
    """Parses flags and calls `module.function(config)`; the CLI only wires things up."""
    config = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                             lock_config=True)
    flags.mark_flags_as_required(["config"])
    multihost = flags.DEFINE_enum(
        "multihost", "auto", ["auto", "true", "false"],
        "Join a multi-host run: auto = when a coordinator address is given; true = always "
        "(TPU VM pod slices, SLURM: JAX finds the peers itself).")
    coordinator = flags.DEFINE_string(
        "coordinator_address", None,
        f"host:port of process 0 (GPU/CPU clusters); default ${distributed.ENV_COORDINATOR}.")
    num_processes = flags.DEFINE_integer(
        "num_processes", None, f"Processes in the run; default ${distributed.ENV_NUM_PROCESSES}.")
    process_id = flags.DEFINE_integer(
        "process_id", None, f"This process's index; default ${distributed.ENV_PROCESS_ID}.")

    def main(argv):
        del argv
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)   # orbax and friends log a lot at INFO
        distributed.initialize(multihost.value, coordinator.value, num_processes.value,
                               process_id.value)
        getattr(importlib.import_module(module), function)(config.value)

    app.run(main)
