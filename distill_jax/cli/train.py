"""distill-train: SFT (and optional soft-target KD) of a student on curated traces.

  distill-train --config=configs/r1_distill_qwen_1p5b.py \\
      --config.model.checkpoint=/ckpt/Qwen2.5-Math-1.5B \\
      --config.data.path=/data/curated/gsm8k/tfds --config.data.tokenizer_path=/ckpt/Qwen2.5-Math-1.5B \\
      --config.workdir=/runs/r1-qwen-1p5b

Rerunning the same command resumes from the latest checkpoint in the workdir.
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
    from distill_jax.training.run import train
    train(_CONFIG.value)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
