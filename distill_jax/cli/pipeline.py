"""distill-pipeline: teacher -> samples -> filter -> students (5 arms) -> evaluation.

  distill-pipeline --config=configs/demo_cpu.py [--config.quick=True]
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
    from distill_jax.demo import pipeline
    pipeline.run(_CONFIG.value)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
