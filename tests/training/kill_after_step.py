"""distill-train's CLI with a step hook that SIGKILLs the process after step N,
once that step's checkpoint writes have finished: a real, unannounced kill that
comes from outside the training loop (the library carries no fault-injection
setting; the test installs the hook).

  python -m tests.training.kill_after_step N --config=configs/sft_tiny_cpu.py ...
"""
import os
import signal
import sys

from distill_jax.cli.common import run_stage

KILL_AFTER_STEP = 0


def _kill_hook(step, checkpointer):
    if step == KILL_AFTER_STEP:
        checkpointer.wait()
        os.kill(os.getpid(), signal.SIGKILL)


def train(config):
    from distill_jax.training.run import train as run_training
    return run_training(config, hooks=[_kill_hook])


if __name__ == "__main__":
    KILL_AFTER_STEP = int(sys.argv.pop(1))
    run_stage("__main__", "train")
