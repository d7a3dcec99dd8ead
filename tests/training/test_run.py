"""distill-train end to end: overfitting + HF export, kill-and-resume, bad input, KD."""
import json
import os
import re

import jax
import numpy as np
import pytest

from configs import sft_tiny_cpu
from distill_jax import models
from distill_jax.training.run import train
from tests.compile_cache import compile_cache_env
from tests.training.kill_after_step import train_cli
from tests.training.conftest import write_traces
from tests.overrides import apply_overrides


def _config(tmp_path, tokenizer_path, data, **overrides):
    c = sft_tiny_cpu.get_config()
    c.workdir = str(tmp_path / "run")
    c.data.path = str(data)
    c.data.tokenizer_path = str(tokenizer_path)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    return apply_overrides(c, overrides)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


@pytest.mark.slow
def test_student_overfits_and_export_matches_in_transformers(tmp_path, tokenizer_path):
    import torch
    import transformers
    write_traces(tmp_path / "t.jsonl", 8)
    c = _config(tmp_path, tokenizer_path, tmp_path / "t.jsonl", **{
        "train.num_steps": 150, "train.learning_rate": 1e-2, "train.warmup_steps": 10,
        "train.final_lr_fraction": 0.05, "train.checkpoint_every": 100, "train.log_every": 5,
        "train.export_dir": str(tmp_path / "export"), "data.packing": False})
    summary = train(c)
    losses = [loss for _, loss in _losses(c.workdir)]
    assert len(losses) == 30
    assert losses[0] > 3.0 and summary["final_loss"] < 0.05, (losses[0], summary["final_loss"])
    assert os.listdir(os.path.join(c.workdir, "tensorboard"))
    # The export is a complete HF directory that transformers loads.
    export = tmp_path / "export"
    assert "tokenizer.model" in os.listdir(export)
    cfg, params = models.load_hf_checkpoint(str(export))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(export), torch_dtype=torch.float32)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24))
    ours = np.asarray(jax.jit(models.Transformer(cfg).apply)({"params": params}, tokens))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_kill_and_resume_continues_bitwise(tmp_path, tokenizer_path):
    write_traces(tmp_path / "t.jsonl", 64)
    common = {"data.path": tmp_path / "t.jsonl", "data.tokenizer_path": tokenizer_path,
              "train.num_epochs": 2, "train.checkpoint_every": 3, "mesh.data": 2,
              "mesh.fsdp": 2, "mesh.tensor": 2, "train.batch_size": 4}
    # The three runs compile the same programs: the first compiles, the others load them.
    cache = compile_cache_env(tmp_path / "jax_cache")
    train_cli({**common, "workdir": tmp_path / "straight"}, cache)
    killed = train_cli({**common, "workdir": tmp_path / "resumed"}, cache, check=False,
                        kill_after_step=8)
    assert killed.returncode == -9                       # SIGKILL: nothing got to clean up
    assert [s for s, _ in _losses(tmp_path / "resumed")] == list(range(1, 9))
    resumed = train_cli({**common, "workdir": tmp_path / "resumed"}, cache)
    assert "resumed from step 6" in resumed.stdout
    straight = _losses(tmp_path / "straight")
    assert len(straight) >= 10
    assert _losses(tmp_path / "resumed") == straight     # bitwise: same floats, same steps


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, tokenizer_path):
    """A tiny-llama run whose loss goes nan after a few checkpointed steps: its error
    and its config (the work directory keeps the good checkpoints)."""
    tmp_path = tmp_path_factory.mktemp("nan")
    write_traces(tmp_path / "t.jsonl", 16)
    c = _config(tmp_path, tokenizer_path, tmp_path / "t.jsonl", **{
        "train.learning_rate": 1e30, "train.max_grad_norm": 0.0, "train.warmup_steps": 0,
        "train.checkpoint_every": 1, "train.num_steps": 8})
    with pytest.raises(FloatingPointError) as e:
        train(c)
    return c, e.value, tmp_path


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(nan_run):
    c, error, _ = nan_run
    assert re.search(r"loss is nan at step (\d+).*last good checkpoint is step (\d+)",
                     str(error)), str(error)
    bad, good = map(int, re.search(r"step (\d+).*step (\d+)", str(error)).groups())
    assert good == bad - 1
    steps = sorted(int(d) for d in os.listdir(os.path.join(c.workdir, "checkpoints"))
                   if d.isdigit())
    assert steps[-1] == good


def test_checkpoint_of_another_model_is_refused(nan_run, tokenizer_path):
    # The nan run's work directory holds tiny-llama checkpoints (its good steps).
    _, _, tmp_path = nan_run
    other = _config(tmp_path, tokenizer_path, tmp_path / "t.jsonl",
                    **{"train.num_steps": 8, "model.preset": "tiny-qwen2"})
    with pytest.raises(ValueError, match="different model"):
        train(other)


def test_online_kd_runs_and_checks_vocabularies(tmp_path, tokenizer_path):
    write_traces(tmp_path / "t.jsonl", 8)
    c = _config(tmp_path, tokenizer_path, tmp_path / "t.jsonl", **{
        "train.num_steps": 3, "kd.mode": "online", "kd.alpha": 0.7, "kd.temperature": 2.0,
        "kd.teacher.preset": "tiny-qwen2", "kd.teacher.dtype": "float32",
        "kd.teacher.param_dtype": "float32"})
    train(c)
    with open(os.path.join(c.workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        assert r["kd"] > 0
        assert r["loss"] == pytest.approx(0.7 * r["kd"] + 0.3 * r["ce"], rel=1e-5)
    # A teacher with another vocabulary is refused before anything is loaded.
    teacher_cfg = models.get_config("tiny-llama")           # 256 ids; the tokenizer has 400
    models.save_hf_checkpoint(str(tmp_path / "teacher"), teacher_cfg,
                              models.init_params(teacher_cfg, jax.random.key(1)))
    bad = _config(tmp_path / "b", tokenizer_path, tmp_path / "t.jsonl", **{
        "kd.mode": "online", "kd.teacher.checkpoint": str(tmp_path / "teacher")})
    with pytest.raises(ValueError, match="share 400 token ids but the teacher model .* has "
                                         "vocab_size 256"):
        train(bad)


def test_offline_topk_kd_runs(tmp_path, tokenizer_path, tokenizer):
    write_traces(tmp_path / "t.jsonl", 8, tokenizer=tokenizer, topk=4)
    c = _config(tmp_path, tokenizer_path, tmp_path / "t.jsonl", **{
        "train.num_steps": 3, "kd.mode": "offline", "kd.topk": 4, "kd.alpha": 0.5})
    train(c)
    with open(os.path.join(c.workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 for r in rows)


def test_a_run_that_cannot_fit_is_refused_before_anything_loads(tmp_path, tokenizer_path):
    """The memory planner runs first: the data path below is never opened."""
    proc = train_cli({"model.preset": "qwen2.5-7b", "data.tokenizer_path": tokenizer_path,
                 "workdir": tmp_path, "data.path": "/nonexistent/curated.jsonl",
                 "train.device_memory_gib": 1, "train.batch_size": 8}, check=False)
    assert proc.returncode != 0
    assert "this train run does not fit" in proc.stderr, proc.stderr[-2000:]
    assert "train.check_memory=False" in proc.stderr
    assert "/nonexistent" not in proc.stderr


def test_data_positions_of_a_checkpoint_resume_by_host_split():
    from distill_jax.training.run import _this_host_data_state
    states = [{"pos": 7}, {"pos": 9}]
    assert _this_host_data_state(states, "rows", "/ckpt", 4) == {"pos": 7}   # any host count
    with pytest.raises(ValueError, match=r"/ckpt/4 holds the data positions of 2 hosts, and "
                                         r"this run has 1"):
        _this_host_data_state(states, "examples", "/ckpt", 4)
    assert _this_host_data_state([{"pos": 3}], "examples", "/ckpt", 4) == {"pos": 3}


def test_an_attention_kernel_this_backend_cannot_run_is_refused_before_data_loads(
        tmp_path, tokenizer_path):
    config = _config(tmp_path, tokenizer_path, "/nonexistent/curated.jsonl",
                     **{"model.attention_impl": "cudnn"})
    with pytest.raises(ValueError, match="attention_impl='cudnn' runs on GPU only; this backend "
                                         "is 'cpu', where attention_impl='auto' picks"):
        train(config)


def test_a_mixture_run_logs_target_tokens_per_source_across_a_resume(tmp_path, tokenizer_path):
    """data.sources: two sources (one with its own system prompt and length cap); the
    metrics rows carry cumulative tokens/<name>, which continue through a resume and
    add up to the trainer's own target-token counts."""
    write_traces(tmp_path / "math.jsonl", 8)
    write_traces(tmp_path / "other.jsonl", 8, seed=1)
    c = _config(tmp_path, tokenizer_path, "/unused.jsonl", **{
        "train.num_steps": 4, "train.checkpoint_every": 2, "train.tensorboard": False,
        "train.batch_size": 2})
    c.mesh = None
    c.data.sources = [{"path": str(tmp_path / "math.jsonl"), "weight": 3.0},
                      {"path": str(tmp_path / "other.jsonl"), "weight": 1.0, "name": "general",
                       "system_prompt": "Answer.", "seq_len": 200}]

    class Stop(Exception):
        pass

    def stop_after_2(step, ckpt):
        if step == 2:
            raise Stop
    with pytest.raises(Stop):
        train(c, hooks=[stop_after_2])
    summary = train(c)
    assert [s["name"] for s in summary["data_sources"]] == ["math", "general"]
    assert any(n.startswith("lengths-general-") for n in os.listdir(tmp_path / "run" / "data_cache"))
    with open(os.path.join(c.workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    prev = {"math": 0.0, "general": 0.0}
    for r in rows:
        assert sum(r[f"tokens/{n}"] - prev[n] for n in prev) == r["target_tokens"]
        assert all(r[f"tokens/{n}"] >= prev[n] for n in prev)
        prev = {n: r[f"tokens/{n}"] for n in prev}
    assert prev["math"] > 0 and prev["general"] > 0
