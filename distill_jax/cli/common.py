"""What every `distill-*` command shares: an ml_collections config file from
`--config` (fields overridable as `--config.a.b=value`), quiet logging unless
`--verbosity` is given, and one library call with the config."""
from __future__ import annotations

import importlib

from absl import app, flags, logging
from ml_collections import config_flags


def run_stage(module: str, function: str) -> None:
    """Parses flags and calls `module.function(config)`; the CLI only wires things up."""
    config = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                             lock_config=True)
    flags.mark_flags_as_required(["config"])

    def main(argv):
        del argv
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)   # orbax and friends log a lot at INFO
        getattr(importlib.import_module(module), function)(config.value)

    app.run(main)
