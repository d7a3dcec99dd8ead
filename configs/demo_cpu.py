"""The embedded default (`make demo`): the R1 recipe end to end on CPU.

  distill-pipeline --config=configs/demo_cpu.py                    # full, ~15 min on 2 cores (14.3-15.1 measured)
  distill-pipeline --config=configs/demo_cpu.py --config.quick=True  # test-sized, ~4 min

A teacher is trained on synthetic multi-step arithmetic with worked solutions
(30% of those with a doubling misread it as "+ 2"), writes a sample per training
prompt, the samples are filtered, and students of one size and one init are
trained under the core arms (answer-only, unfiltered, filtered, filtered +
online KD; side by side, one worker process per core: config.workers), then
everyone is evaluated on a held-out split with 95% intervals.
The values live in distill_jax/demo/config.py; every arm and three seeds:
configs/demo_study.py. See distill_jax/demo/pipeline.py.
"""
from distill_jax.demo.config import demo_config


def get_config():
    return demo_config()
