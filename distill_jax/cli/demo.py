"""distill-demo: the foundation demo (`make demo`) on the embedded default config."""
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from distill_jax.demo import foundation_demo
    foundation_demo.run(_CONFIG.value)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
