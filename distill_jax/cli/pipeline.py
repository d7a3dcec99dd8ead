"""distill-pipeline: teacher -> samples -> filter -> students (one per arm) -> evaluation.

  distill-pipeline --config=configs/demo_cpu.py [--config.quick=True]   # make demo
  distill-pipeline --config=configs/demo_study.py                       # every arm, 3 seeds
"""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.demo.pipeline", "run")


if __name__ == "__main__":
    run()
