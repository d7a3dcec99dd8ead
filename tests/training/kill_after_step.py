"""distill-train's CLI with a step hook that SIGKILLs the process after step N,
once that step's checkpoint writes have finished: a real, unannounced kill that
comes from outside the training loop (the library carries no fault-injection
setting; the test installs the hook).

  python -m tests.training.kill_after_step N --config=configs/sft_tiny_cpu.py ...
"""
import os
import signal
import subprocess
import sys

from distill_jax.cli.common import run_stage

KILL_AFTER_STEP = 0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kill_hook(step, checkpointer):
    if step == KILL_AFTER_STEP:
        checkpointer.wait()
        os.kill(os.getpid(), signal.SIGKILL)


def train(config):
    from distill_jax.training.run import train as run_training
    return run_training(config, hooks=[_kill_hook])


def train_cli(config_overrides, env_extra=None, check=True, kill_after_step=0):
    """distill-train on configs/sft_tiny_cpu.py + `--config.k=v` overrides, as a
    subprocess (its own environment, e.g. a device count or a compilation cache);
    with `kill_after_step`, through this wrapper, which SIGKILLs it after that step."""
    entry = (["tests.training.kill_after_step", str(kill_after_step)] if kill_after_step
             else ["distill_jax.cli.train"])
    cmd = [sys.executable, "-m", *entry, f"--config={REPO}/configs/sft_tiny_cpu.py"]
    cmd += [f"--config.{k}={v}" for k, v in config_overrides.items()]
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


if __name__ == "__main__":
    KILL_AFTER_STEP = int(sys.argv.pop(1))
    run_stage("__main__", "train")
