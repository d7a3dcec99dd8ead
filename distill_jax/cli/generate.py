"""distill-generate: n teacher samples per prompt into resumable JSONL shards.

  distill-generate --config=configs/generate_gsm8k.py \\
      --config.teacher.checkpoint=/ckpt/Qwen2.5-Math-7B-Instruct \\
      --config.tokenizer.path=/ckpt/Qwen2.5-Math-7B-Instruct --config.output_dir=/data/traces
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
    from distill_jax.sampling.generate import generate_traces
    generate_traces(_CONFIG.value)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
