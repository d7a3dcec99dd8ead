"""The embedded default (`make demo`): the R1 recipe end to end on CPU.

  distill-pipeline --config=configs/demo_cpu.py                    # full, ~15 min on 2 cores
  distill-pipeline --config=configs/demo_cpu.py --config.quick=True  # test-sized, ~3 min

A teacher is trained briefly on synthetic multi-step arithmetic with worked
solutions, writes n samples per training prompt, the samples are filtered, and
students of one size and one init are trained under each arm, then everyone is
evaluated on a held-out split. See distill_jax/demo/pipeline.py.
"""
from distill_jax.demo.config import demo_config


def get_config():
    return demo_config()
