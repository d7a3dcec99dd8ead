"""The memory planner against measured peaks of real training steps on CPU.

For each small config, a fresh process builds the state, compiles the step, and
measures the step's peak as

  live state and batch (bytes of the arrays before the step)
  + the process's resident-memory high-water mark during the step over its
    resident memory just before (Linux: VmHWM reset through clear_refs)

with glibc told to mmap every large buffer (so freed memory leaves the resident
set and cannot hide new allocations). XLA's own buffer assignment
(`compiled.memory_analysis()`: arguments + outputs - aliased + temporaries) is
reported next to it. CPU devices expose no allocator statistics, hence RSS.

  python benchmarks/memory_plan_vs_measured.py [--long]

`--long` runs the long-row sweep instead: one row of 2k-16k tokens, `xla`
attention (quadratic scores) against `auto` (blockwise on CPU above
AUTO_XLA_MAX_LEN), with the chunked loss; it reports each peak, the planner's
estimate, and how the peak grows from 4k to 8k tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A second shape: other width ratios, fewer kv heads, a smaller vocabulary.
WIDE = dict(hidden_size=512, intermediate_size=1408, num_heads=8, num_kv_heads=2, head_dim=64,
            vocab_size=4096, num_layers=3)
# (name, model overrides, batch, seq_len, microbatches)
CASES = [
    ("remat none", {"remat_policy": "none"}, 8, 256, 1),
    ("remat full", {"remat_policy": "full"}, 8, 256, 1),
    ("remat dots", {"remat_policy": "dots"}, 8, 256, 1),
    ("remat dots_with_no_batch_dims", {"remat_policy": "dots_with_no_batch_dims"}, 8, 256, 1),
    ("remat save_qkv_proj", {"remat_policy": "save_qkv_proj"}, 8, 256, 1),
    ("none, 2 microbatches", {"remat_policy": "none"}, 8, 256, 2),
    ("none, seq 512", {"remat_policy": "none"}, 4, 512, 1),
    ("full, seq 1024", {"remat_policy": "full"}, 4, 1024, 1),
    ("wider model, none", dict(WIDE, remat_policy="none"), 4, 512, 1),
    ("wider model, full", dict(WIDE, remat_policy="full"), 4, 512, 1),
    ("wider model, dots, 2 microbatches", dict(WIDE, remat_policy="dots"), 8, 512, 2),
]
# Long rows: one row per step, full remat, the loss in 1024-position chunks. xla at
# 16k would hold ~4 [4 heads, 16k, 16k] f32 matrices (16 GiB): not run.
LONG_MODEL = dict(hidden_size=256, intermediate_size=768, num_heads=4, num_kv_heads=2,
                  head_dim=64, vocab_size=4096, num_layers=2, remat_policy="full",
                  max_position_embeddings=32768)
LONG_CASES = [(f"{impl}, {n // 1024}k", dict(LONG_MODEL, attention_impl=impl), 1, n, 1, 1024)
              for impl in ("xla", "auto") for n in (2048, 4096, 8192, 16384)
              if not (impl == "xla" and n > 8192)]
# The short cases calibrate the xla attention model, so they name it (auto would pick
# blockwise above 128 tokens); the long sweep is where auto is measured.
MODEL = dict(model_type="llama", vocab_size=8192, hidden_size=256, intermediate_size=1024,
             num_layers=4, num_heads=8, num_kv_heads=4, head_dim=32, dtype="float32",
             param_dtype="float32", name="plan-check", attention_impl="xla")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(overrides: dict, batch: int, seq_len: int, microbatches: int,
            loss_chunk_size: int = 0) -> dict:
    """Runs in a fresh process: the measured peak of one training step."""
    import gc

    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    from distill_jax import models
    from distill_jax.training.optimizer import make_optimizer
    from distill_jax.training.trainer import Trainer

    cfg = models.ModelConfig(**{**MODEL, **overrides})
    tc = ml_collections.ConfigDict(dict(learning_rate=1e-4, warmup_steps=0, final_lr_fraction=0.1,
                                        weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
                                        max_grad_norm=1.0))
    tx, schedule = make_optimizer(tc, 100)
    trainer = Trainer(cfg, tx, schedule, microbatches=microbatches,
                      loss_chunk_size=loss_chunk_size)
    state = trainer.init_state(models.init_params(cfg, jax.random.key(0)))
    rng = np.random.default_rng(0)
    data = {"inputs": rng.integers(0, cfg.vocab_size, (batch, seq_len)),
            "targets": rng.integers(0, cfg.vocab_size, (batch, seq_len)),
            "loss_mask": np.ones((batch, seq_len)), "segment_ids": np.ones((batch, seq_len)),
            "positions": np.tile(np.arange(seq_len), (batch, 1))}
    data = {k: jnp.asarray(v, jnp.int32) for k, v in data.items()}
    step = jax.jit(trainer._train_step, donate_argnums=(0,))
    compiled = step.lower(state, data, None).compile()
    stats = compiled.memory_analysis()
    for _ in range(2):                      # warm: thread pools, first-run allocations
        state, metrics = compiled(state, data, None)
        jax.block_until_ready(metrics)
    gc.collect()
    live = sum(x.nbytes for x in jax.tree_util.tree_leaves((state, data)))
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                        # reset the high-water mark to the current RSS
    state, metrics = compiled(state, data, None)
    jax.block_until_ready((state, metrics))
    peak = _status("VmHWM")
    return {"measured": live + max(peak - before, 0), "live_state": live,
            "xla": int(stats.argument_size_in_bytes + stats.output_size_in_bytes
                       - stats.alias_size_in_bytes + stats.temp_size_in_bytes)}


def estimate(overrides: dict, batch: int, seq_len: int, microbatches: int,
             loss_chunk_size: int = 0) -> dict:
    from distill_jax import models, planning
    cfg = models.ModelConfig(**{**MODEL, **overrides})
    plan = planning.plan_training(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, batch, seq_len,
                                  microbatches, loss_chunk_size=loss_chunk_size, backend="cpu")
    return {"planned": plan.total, "terms": plan.terms, "attention": plan.attention}


def run_cases(cases=CASES) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="",
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for name, overrides, batch, seq_len, mb, *chunk in cases:
        args = [overrides, batch, seq_len, mb, *chunk]
        out = subprocess.run(
            [sys.executable, __file__, "--measure", json.dumps(args)],
            capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        row = {"case": name, "batch": batch, "seq_len": seq_len, "microbatches": mb,
               **measured, **estimate(*args)}
        row["planned/measured"] = row["planned"] / row["measured"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    mib = 1024 ** 2
    lines = ["| case | batch x seq | planned MiB | measured MiB | XLA buffers MiB | planned / measured |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['batch']} x {r['seq_len']} | {r['planned'] / mib:.1f} | "
                     f"{r['measured'] / mib:.1f} | {r['xla'] / mib:.1f} | "
                     f"{r['planned/measured']:.2f} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """Peak at 8k over peak at 4k tokens per row, per attention setting."""
    by = {(r["case"].split(",")[0], r["seq_len"]): r["measured"] for r in rows}
    return "\n".join(f"{impl}: measured peak 8k / 4k = {by[(impl, 8192)] / by[(impl, 4096)]:.2f}"
                     for impl in ("xla", "auto") if (impl, 8192) in by and (impl, 4096) in by)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--long", action="store_true", help="the long-row sweep")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*json.loads(args.measure))))
        return
    rows = run_cases(LONG_CASES if args.long else CASES)
    print(table(rows))
    if args.long:
        print(growth(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
