"""distill-pipeline: teacher -> samples -> filter -> students (5 arms) -> evaluation.

  distill-pipeline --config=configs/demo_cpu.py [--config.quick=True]
"""
from distill_jax.cli.common import run_stage


def run():
    run_stage("distill_jax.demo.pipeline", "run")


if __name__ == "__main__":
    run()
