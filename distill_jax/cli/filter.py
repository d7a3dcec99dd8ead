"""distill-filter: teacher trace shards -> verified, filtered, deduplicated dataset.

  distill-filter --config=configs/filter_default.py \\
      --config.input_dir=artifacts/traces/gsm8k --config.output_dir=artifacts/curated/gsm8k
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # orbax and friends log a lot at INFO
    from distill_jax.filters.rejection import filter_traces
    filter_traces(_CONFIG.value)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
