"""The `distill-train` stage: curated traces -> trained student (+ HF export).

Resumes by itself: if the work directory holds a checkpoint, training continues
from it — params, optimizer state, step and the data iterator's position — and
the loss curve continues exactly as an uninterrupted run's would (bitwise on
CPU). A non-finite loss stops the run with the step named; the state that
produced it is not saved, so the last checkpoint stays the last good one.

Several hosts: every host runs this same function. Each feeds its rows of the
global batch (see `data.host_split`), all of them save and restore the orbax
checkpoint together (the checkpoint directory must be one shared path: NFS or
a bucket orbax can write), and process 0 alone writes metrics, the summary and
the HF export.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from distill_jax import distributed, models, planning, sharding
from distill_jax.data.sft import SFTPipeline, describe, open_source
from distill_jax.fileio import write_json_atomic
from distill_jax.progress import Progress
from distill_jax.tokenizer import load_tokenizer
from distill_jax.training.checkpoint import Checkpointer
from distill_jax.training.metrics import MetricsWriter
from distill_jax.training.optimizer import make_optimizer
from distill_jax.training.trainer import (KDSettings, Trainer, check_vocabularies,
                                          model_flops_per_token, peak_tflops_per_device)


def _model_config(mc, tokenizer) -> models.ModelConfig:
    return models.config_from_section(mc, tokenizer.vocab_size)


def _load_params(mc, cfg, mesh):
    if mc.get("checkpoint"):
        _, params = models.load_hf_checkpoint(mc.checkpoint, dtype=jnp.dtype(cfg.param_dtype),
                                              mesh=mesh)
        return params
    return models.init_params(cfg, jax.random.key(mc.get("init_seed", 0)), mesh=mesh)


def train(config) -> dict[str, Any]:
    """Runs (or resumes) training; returns the summary written to workdir/summary.json."""
    workdir = os.path.abspath(config.workdir)
    os.makedirs(workdir, exist_ok=True)
    dc, tc, kc = config.data, config.train, config.kd
    if not dc.tokenizer_path:
        raise ValueError("config.data.tokenizer_path is empty: set it to the student's "
                         "tokenizer (.model file or a directory with tokenizer.json)")
    tokenizer = load_tokenizer(dc.tokenizer_path)
    cfg = _model_config(config.model, tokenizer)
    kd = KDSettings(kc.mode, kc.alpha, kc.temperature, kc.kind, kc.beta)
    teacher_cfg = None
    if kd.mode == "online":
        teacher_cfg = _model_config(kc.teacher, tokenizer)
        check_vocabularies(cfg, teacher_cfg)          # before anything is loaded
    if kd.mode == "offline" and kc.topk < 1:
        raise ValueError("kd.mode='offline' needs kd.topk >= 1 (the stored top-k width to use)")
    mesh = sharding.make_mesh(dict(config.mesh)) if config.get("mesh") else None
    _check_memory(config)

    pipeline = SFTPipeline(
        open_source(dc.path), tokenizer, seq_len=dc.seq_len, batch_size=tc.batch_size,
        # A fixed step count cycles through the data for as long as it takes.
        num_epochs=None if tc.num_steps else tc.num_epochs, seed=config.seed, packing=dc.packing, overlong=dc.overlong,
        chat_template=dc.get("chat_template") or None,
        system_prompt=dc.get("system_prompt") or None,
        topk=kc.topk if kd.mode == "offline" else 0, num_packing_bins=dc.num_packing_bins,
        process_index=jax.process_index(), process_count=jax.process_count(),
        host_split=dc.get("host_split", "rows"))
    primary = distributed.is_primary()
    say = print if primary else (lambda *a, **k: None)
    say(f"train: data {dc.path}: {describe(pipeline.stats, dc.seq_len, dc.overlong)}")
    # With host_split="examples" hosts may count different batch totals: the shortest wins.
    total_steps = tc.num_steps or min(distributed.gather_json(pipeline.count_batches()))
    if total_steps < 1:
        raise ValueError(f"{dc.path}: {pipeline.stats.kept} usable examples make no full batch "
                         f"of {tc.batch_size} rows; lower train.batch_size or add data")
    tx, schedule = make_optimizer(tc, total_steps)
    trainer = Trainer(cfg, tx, schedule, mesh=mesh, microbatches=tc.microbatches, kd=kd,
                      teacher_cfg=teacher_cfg)
    meta = {"model": models.to_hf_config(cfg), "total_steps": total_steps}
    ckpt = Checkpointer(tc.get("checkpoint_dir") or os.path.join(workdir, "checkpoints"),
                        tc.checkpoint_every, tc.keep_checkpoints, tc.async_checkpointing)
    data_iter = iter(pipeline.dataset())
    start = ckpt.latest_step()
    if start is not None:
        state, data_states = ckpt.restore(start, trainer.abstract_state(), meta)
        data_iter.set_state(_this_host_data_state(data_states, pipeline.host_split,
                                                  ckpt.directory, start))
        say(f"train: resumed from step {start} in {ckpt.directory}")
    else:
        start = 0
        state = trainer.init_state(_load_params(config.model, cfg, mesh))
    teacher_params = None
    if kd.mode == "online":
        teacher_params = _load_params(kc.teacher, teacher_cfg, mesh)

    writer = MetricsWriter(workdir, resume_step=start, tensorboard=tc.get("tensorboard", True))
    flops_per_token = model_flops_per_token(cfg, dc.seq_len) + (
        model_flops_per_token(teacher_cfg, dc.seq_len, training=False) if teacher_cfg else 0.0)
    peak = peak_tflops_per_device(tc.get("peak_tflops", 0.0))
    progress = Progress(total_steps - start, "steps", "train", skip_first=True, enabled=primary)
    kill_at = tc.get("fault_injection_kill_at_step", 0)
    step, last_loss, window_start, window_tokens = start, None, time.monotonic(), 0.0
    data_state = data_iter.get_state()      # the iterator position that goes with `state`
    batch = _next_batch(data_iter, step, total_steps)
    try:
        while batch is not None:
            state, metrics = trainer.step(state, batch, teacher_params)
            step += 1
            data_state = data_iter.get_state()
            # The step runs asynchronously: prepare the next batch on the host meanwhile,
            # and only then wait for this step's loss.
            batch = _next_batch(data_iter, step, total_steps)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                ckpt.wait()
                raise FloatingPointError(
                    f"loss is {loss} at step {step}; stopping without saving that state. The "
                    f"last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
            last_loss = loss
            tokens = float(metrics["tokens"])
            window_tokens += tokens
            if step % tc.log_every == 0 or step == total_steps:
                elapsed = time.monotonic() - window_start
                row = {k: float(v) for k, v in metrics.items()}
                row["tokens_per_s"] = window_tokens / elapsed if elapsed > 0 else 0.0
                if peak:
                    row["mfu"] = (row["tokens_per_s"] * flops_per_token
                                  / (peak * 1e12 * jax.device_count()))
                writer.write(step, row)
                window_start, window_tokens = time.monotonic(), 0.0
            if ckpt.should_save(step):
                ckpt.save(step, state, distributed.gather_json(data_state), meta)
            progress.update(1, status={"loss": loss}, tokens=tokens)
            if kill_at and step == kill_at:           # tests: a real, unannounced kill
                ckpt.wait()
                os.kill(os.getpid(), signal.SIGKILL)
        if ckpt.latest_step() != step:
            ckpt.save(step, state, distributed.gather_json(data_state), meta, force=True)
    finally:
        ckpt.close()
        writer.close()

    summary = {"steps": step, "total_steps": total_steps, "final_loss": last_loss,
               "data": dataclasses.asdict(pipeline.stats), "model": cfg.name,
               "params": models.count_params(cfg), "kd": dataclasses.asdict(kd)}
    if tc.get("export_dir"):
        export = os.path.abspath(tc.export_dir)
        params = distributed.fetch_to_host(state.params)   # collective: every host takes part
        if primary:
            models.save_hf_checkpoint(export, cfg, params,
                                      dtype=np.dtype(tc.get("export_dtype", "float32")))
            tokenizer_files = _copy_tokenizer(dc.tokenizer_path, export)
            summary["export"] = {"path": export, "tokenizer_files": tokenizer_files}
    if primary:
        write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    say(f"train: {step}/{total_steps} steps, final loss {last_loss}")
    return summary


def _this_host_data_state(states: list[dict], host_split: str, directory: str, step: int) -> dict:
    """This host's iterator position from a checkpoint's per-host list."""
    if host_split == "rows":      # every host walks the same global stream
        return states[0]
    if len(states) != jax.process_count():
        raise ValueError(
            f"checkpoint {directory}/{step} holds the data positions of {len(states)} hosts, and "
            f"this run has {jax.process_count()}; with data.host_split='examples' a run resumes "
            "on the same number of hosts (host_split='rows' resumes on any)")
    return states[jax.process_index()]


def _check_memory(config) -> None:
    """Refuses, before anything is allocated, a run the memory planner says cannot
    fit (on accelerators that report their memory, or with train.device_memory_gib)."""
    if not config.train.get("check_memory", True):
        return
    gib = config.train.get("device_memory_gib", 0.0)
    memory = int(gib * planning.GIB) if gib else planning.device_memory_bytes()
    if not memory:
        return
    try:
        plan = planning.plan_from_config(config, jax.device_count(), memory)
    except planning.PlanError as e:
        raise planning.PlanError(
            f"{e}\n(the planner's activation terms are estimates; to run anyway, set "
            "train.check_memory=False)") from None
    logging.info("train: memory plan\n%s", plan.table())


def _next_batch(data_iter, step: int, total_steps: int):
    """The next batch, or None when the run is complete or the data ran out."""
    if step >= total_steps:
        return None
    try:
        return next(data_iter)
    except StopIteration:
        logging.warning("train: data ran out at step %d of %d", step, total_steps)
        return None


def _copy_tokenizer(path: str, export_dir: str) -> list[str]:
    """Puts the tokenizer next to the exported weights, so the directory is complete."""
    import shutil
    copied = []
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "tokenizer.model", "chat_template.jinja"):
            if os.path.exists(os.path.join(path, name)):
                shutil.copy(os.path.join(path, name), export_dir)
                copied.append(name)
    elif os.path.isfile(path):
        # A SentencePiece model goes by the name HF loaders look for.
        name = "tokenizer.model" if path.endswith(".model") else os.path.basename(path)
        shutil.copy(path, os.path.join(export_dir, name))
        copied.append(name)
    return copied
