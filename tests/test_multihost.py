"""Multi-host runs: 2 local processes x 2 CPU devices (gloo collectives) against
one process with 4 devices — generate, filter, train with a kill and a resume,
evaluate. The 2-host generate, filter and evaluate keep their outputs in a bucket
(the fake object store); training's workdir is a shared local directory.

Every stage is launched through its CLI with --coordinator_address /
--num_processes / --process_id, the way a GPU cluster launches it.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from distill_jax import fake_bucket, models, storage
from distill_jax.sampling.generate import shard_name
from distill_jax.tokenizer import load_tokenizer
from tests.tiny_models import arithmetic_tokenizer, tiny_checkpoint
from tests.training.conftest import write_traces

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROMPTS, PER_SHARD = 10, 2           # 5 shards: host 0 owns 3, host 1 owns 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(stage: str, config: str, overrides: dict, processes: int, devices: int,
            expect_ok: bool = True, kill_after_step: int = 0) -> list[subprocess.CompletedProcess]:
    """Runs `distill-<stage>` as `processes` cooperating processes; returns each result.
    `kill_after_step` (train only) runs the test wrapper whose hook SIGKILLs every
    process after that step."""
    entry = ["tests.training.kill_after_step", str(kill_after_step)] if kill_after_step \
        else [f"distill_jax.cli.{stage}"]
    cmd = [sys.executable, "-m", *entry, f"--config={REPO}/configs/{config}"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if processes > 1:
        port = _free_port()
        cmds = [cmd + [f"--coordinator_address=localhost:{port}",
                       f"--num_processes={processes}", f"--process_id={i}"]
                for i in range(processes)]
    else:
        cmds = [cmd]
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    results = []
    for c, p in zip(cmds, procs):
        try:
            out, err = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            out, err = p.communicate()
        results.append(subprocess.CompletedProcess(c, p.returncode, out, err))
    if expect_ok:
        for r in results:
            assert r.returncode == 0, r.stderr[-4000:]
    return results


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    sp = arithmetic_tokenizer(root)
    tiny_checkpoint(root / "teacher", load_tokenizer(sp).vocab_size)
    write_traces(root / "curated.jsonl", 32)
    return root, sp


def _generate_overrides(root, sp, shared_data, out):
    return {"output_dir": out, "prompts.path": shared_data / "gsm8k_test.jsonl",
            "prompts.limit": NUM_PROMPTS, "prompts_per_shard": PER_SHARD,
            "tokenizer.path": sp, "teacher.checkpoint": root / "teacher",
            "teacher.dtype": "float32", "teacher.param_dtype": "float32",
            "sampling.n": 2, "sampling.temperature": 1.0, "sampling.max_new_tokens": 16,
            "sampling.return_top_k": 2, "num_slots": 8,
            "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}


def _train_overrides(root, sp, workdir, **extra):
    return {"workdir": workdir, "data.path": root / "curated.jsonl", "data.tokenizer_path": sp,
            "train.batch_size": 4, "train.num_steps": 6, "train.checkpoint_every": 2,
            "train.export_dir": workdir / "export", "mesh.data": 2, "mesh.fsdp": 2,
            "mesh.tensor": 1, **extra}


def _evaluate_overrides(shared_data, student, out):
    return {"model.checkpoint": student, "model.dtype": "float32",
            "model.param_dtype": "float32",
            "benchmarks.gsm8k.path": shared_data / "gsm8k_test.jsonl",
            "benchmarks.gsm8k.limit": 5, "benchmarks.gsm8k.k": 2, "sampling.max_new_tokens": 12,
            "output_dir": out, "num_slots": 8, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 1}


def _files(path):
    """Every file under `path` (relative name -> bytes)."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file()}


def _reports(stdout: str, stage: str) -> bool:
    """Whether a process printed the stage's own lines ("train: ..."); gloo prints
    connection messages from several threads into the same stdout, so only our
    prefixes are looked at."""
    return any(f"{stage}:" in line for line in stdout.splitlines())


def _losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


@pytest.mark.slow
def test_two_hosts_equal_one_host_generate_filter_train_resume_evaluate(setup, shared_data,
                                                                      tmp_path, monkeypatch):
    """Each stage runs once as one process with 4 devices (the reference, in a local
    directory) and once as 2 hosts x 2 devices: generate, filter and evaluate with
    their outputs in a bucket (fake_bucket.py: whole objects, no rename; generation
    and the filter also read their inputs from it), training in a shared local
    workdir (checkpoints and the export written by the hosts to local disk)."""
    root, sp = setup
    monkeypatch.setenv(fake_bucket.ROOT_ENV, str(tmp_path))     # the subprocesses' bucket
    one, two = root / "one", root / "two"
    bucket = f"fakebucket://pod/{root.name}"

    def bucket_files(path):
        return {f: storage.read_bytes(f"{path}/{f}") for f in storage.walk_files(path)}

    # ---- distill-generate: disjoint shards per host, the same bytes as one host.
    _launch("generate", "generate_gsm8k.py", _generate_overrides(root, sp, shared_data,
                                                                  one / "traces"), 1, 4)
    gen = _launch("generate", "generate_gsm8k.py", _generate_overrides(root, sp, shared_data,
                                                                        f"{bucket}/traces"), 2, 2)
    single, double = _files(one / "traces"), bucket_files(f"{bucket}/traces")
    for k in range(5):
        assert single[shard_name(k, 5)] == double[shard_name(k, 5)], k
    assert json.loads(double["manifest.json"]) == json.loads(single["manifest.json"])
    summary = json.loads(double["summary.json"])
    assert summary["num_hosts"] == 2 and summary["complete_shards"] == 5
    assert summary["samples"] == 2 * NUM_PROMPTS
    assert _reports(gen[0].stdout, "generate") and not _reports(gen[1].stdout, "generate")

    # ---- distill-filter: host CPU work, done once by process 0 while the other waits.
    _launch("filter", "filter_default.py", {
        "input.path": one / "traces", "output_dir": one / "curated",
        "decontamination.data_dir": shared_data, "num_workers": 1}, 1, 4)
    filt = _launch("filter", "filter_default.py", {
        "input.path": f"{bucket}/traces", "output_dir": f"{bucket}/curated",
        "decontamination.data_dir": shared_data, "num_workers": 1}, 2, 2)
    assert storage.is_committed(f"{bucket}/curated")
    report = json.loads(storage.read_text(f"{bucket}/curated/report.json"))
    assert report["input"]["samples"] == 2 * NUM_PROMPTS
    assert _reports(filt[0].stdout, "filter") and not _reports(filt[1].stdout, "filter")
    assert storage.read_bytes(f"{bucket}/curated/curated.jsonl") == \
        (one / "curated" / "curated.jsonl").read_bytes()

    # ---- distill-train: a kill after step 3 (checkpoint at 2), then a resume.
    _launch("train", "sft_tiny_cpu.py", _train_overrides(root, sp, one / "run"), 1, 4)
    killed = _launch("train", "sft_tiny_cpu.py", _train_overrides(root, sp, two / "run"), 2, 2,
                     expect_ok=False, kill_after_step=3)
    assert [r.returncode for r in killed] == [-9, -9]
    assert max(map(int, os.listdir(two / "run" / "checkpoints"))) == 2   # step 3 was lost
    resumed = _launch("train", "sft_tiny_cpu.py", _train_overrides(root, sp, two / "run"), 2, 2)
    assert "train: resumed from step 2" in resumed[0].stdout
    assert not _reports(resumed[1].stdout, "train")
    reference, ours = _losses(one / "run"), _losses(two / "run")
    assert [s for s, _ in ours] == [s for s, _ in reference] == list(range(1, 7))
    np.testing.assert_allclose([x for _, x in ours], [x for _, x in reference], rtol=0, atol=1e-5)
    # The export gathers the sharded params from both hosts; process 0 writes it.
    _, p_one = models.load_hf_checkpoint(str(one / "run" / "export"))
    _, p_two = models.load_hf_checkpoint(str(two / "run" / "export"))
    for a, b in zip(jax.tree_util.tree_leaves(p_one), jax.tree_util.tree_leaves(p_two)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)

    # ---- distill-evaluate of the exported student: problems split over hosts.
    _launch("evaluate", "evaluate_gsm8k.py",
            _evaluate_overrides(shared_data, one / "run" / "export", one / "eval"), 1, 4)
    _launch("evaluate", "evaluate_gsm8k.py",
            _evaluate_overrides(shared_data, one / "run" / "export", f"{bucket}/eval"), 2, 2)
    assert bucket_files(f"{bucket}/eval") == _files(one / "eval")
    assert len((one / "eval" / "gsm8k" / "per_problem.jsonl").read_text().splitlines()) == 5


def test_cluster_flags_are_checked():
    from distill_jax import distributed
    with pytest.raises(ValueError, match="without num_processes"):
        distributed.initialize("auto", "localhost:1234", None, 0)
    with pytest.raises(ValueError, match=r"process_id 2 is outside \[0, 2\)"):
        distributed.initialize("auto", "localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="multihost must be"):
        distributed.initialize("sometimes")
    assert distributed.initialize("auto") is False          # no coordinator: one process
    assert distributed.initialize("false", "localhost:1234", 2, 0) is False
