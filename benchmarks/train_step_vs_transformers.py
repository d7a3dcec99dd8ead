"""SFT training step: distill_jax (one jitted step) vs transformers + torch AdamW.

Same ~50M Llama-style model (our random init, exported and loaded by
transformers), same batch of token ids, fp32, AdamW with global-norm clipping on
both sides, on this machine's CPU. Reports tokens/s and the ratio, and the two
first-step losses (which must agree: same weights, same data).

--parts kd also measures the soft-target KD overheads over plain SFT in our
step: online KD with a teacher 4x the student's size (against the FLOP-based
expectation: teacher forward / student forward+backward), and offline top-k KD.

  python benchmarks/train_step_vs_transformers.py [--parts compare,kd] [--write]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import ml_collections
import numpy as np
import torch
import transformers

from distill_jax import models
from distill_jax.training.optimizer import make_optimizer
from distill_jax.training.trainer import KDSettings, Trainer, model_flops_per_token

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_row, bench_model_config, interleaved  # noqa: E402

OPT = ml_collections.ConfigDict(dict(learning_rate=1e-4, warmup_steps=0, final_lr_fraction=1.0,
                                     weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8,
                                     max_grad_norm=1.0))


def _batch(cfg, rows, length, seed=0, topk=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (rows, length + 1)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:],
             "loss_mask": np.ones((rows, length), np.int32),
             "segment_ids": np.ones((rows, length), np.int32),
             "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}
    if topk:
        batch["kd_mask"] = np.ones((rows, length), np.int32)
        batch["topk_ids"] = rng.integers(0, cfg.vocab_size, (rows, length, topk)).astype(np.int32)
        lp = -np.sort(rng.exponential(2.0, (rows, length, topk)), axis=-1)
        batch["topk_logprobs"] = lp.astype(np.float32)
    return batch


def _ours(cfg, batch, kd=KDSettings(), teacher_cfg=None):
    """A step function of our Trainer, and a dict that gets its first CE loss."""
    tx, schedule = make_optimizer(OPT, 1000)
    trainer = Trainer(cfg, tx, schedule, kd=kd, teacher_cfg=teacher_cfg)
    holder = {"state": trainer.init_state(models.init_params(cfg, jax.random.key(0)))}
    teacher_params = (models.init_params(teacher_cfg, jax.random.key(1))
                      if kd.mode == "online" else None)
    first = {}

    def step():
        holder["state"], metrics = trainer.step(holder["state"], batch, teacher_params)
        jax.block_until_ready(metrics["loss"])
        first.setdefault("loss", float(metrics["ce"]))
    return step, first


def _theirs(cfg, batch):
    params = models.init_params(cfg, jax.random.key(0))
    with tempfile.TemporaryDirectory() as d:
        models.save_hf_checkpoint(d, cfg, params)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    decay = [p for n, p in model.named_parameters() if "norm" not in n and "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n or "bias" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": OPT.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=OPT.learning_rate, betas=(OPT.b1, OPT.b2), eps=OPT.eps)
    inputs = torch.tensor(batch["inputs"], dtype=torch.long)
    targets = torch.tensor(batch["targets"], dtype=torch.long)
    first = {}

    def step():
        logits = model(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                 targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        first.setdefault("loss", float(loss.detach()))
    return step, first


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="compare,kd")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=7,
                        help="timed rounds (each runs every variant once)")
    parser.add_argument("--topk", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    cfg = bench_model_config(large=True)
    batch = _batch(cfg, args.batch, args.length)
    tokens = args.batch * args.length
    shape = f"batch {args.batch} x {args.length}"
    name = f"{cfg.name} ({models.count_params(cfg) / 1e6:.0f}M)"

    steps, firsts = {}, {}
    steps["sft"], firsts["sft"] = _ours(cfg, batch)
    if "compare" in parts:
        steps["transformers"], firsts["transformers"] = _theirs(cfg, batch)
    if "kd" in parts:
        # A teacher with ~4x the student's parameters: twice the width and the depth.
        teacher = cfg.replace(hidden_size=cfg.hidden_size * 2, num_layers=cfg.num_layers * 2,
                              intermediate_size=cfg.intermediate_size * 2,
                              num_heads=cfg.num_heads * 2, num_kv_heads=cfg.num_kv_heads * 2,
                              name="bench-teacher")
        steps["online"], _ = _ours(cfg, batch, KDSettings("online", 0.5, 2.0), teacher)
        topk_batch = _batch(cfg, args.batch, args.length, topk=args.topk)
        steps["offline"], _ = _ours(cfg, topk_batch, KDSettings("offline", 0.5, 2.0))
    secs = interleaved(steps, args.steps)

    ours_s, ours_loss = secs["sft"], firsts["sft"]["loss"]
    print(f"distill_jax SFT step : {ours_s * 1e3:8.1f} ms ({tokens / ours_s:,.0f} tok/s), "
          f"first loss {ours_loss:.5f}")
    if "compare" in parts:
        ref_s, ref_loss = secs["transformers"], firsts["transformers"]["loss"]
        print(f"transformers + AdamW : {ref_s * 1e3:8.1f} ms ({tokens / ref_s:,.0f} tok/s), "
              f"first loss {ref_loss:.5f}")
        print(f"ratio (ours / transformers): {ref_s / ours_s:.2f}x")
        if args.write:
            append_row([f"SFT train step, {name}, f32, AdamW + clipping, {shape}",
                        f"{tokens / ours_s:,.0f} tok/s", f"{tokens / ref_s:,.0f} tok/s",
                        f"{ref_s / ours_s:.2f}x",
                        f"first loss {ours_loss:.5f} vs {ref_loss:.5f}"])
    if "kd" in parts:
        ratio_params = models.count_params(teacher) / models.count_params(cfg)
        online_s, offline_s = secs["online"], secs["offline"]
        expected = model_flops_per_token(teacher, args.length, training=False) / \
            model_flops_per_token(cfg, args.length)
        online_over = online_s / ours_s - 1
        offline_over = offline_s / ours_s - 1
        print(f"online KD (teacher {ratio_params:.1f}x params): {online_s * 1e3:.1f} ms, overhead "
              f"{online_over:+.0%} (FLOP-based expectation {expected:+.0%})")
        print(f"offline top-{args.topk} KD: {offline_s * 1e3:.1f} ms, overhead {offline_over:+.1%}")
        if args.write:
            append_row([f"online KD overhead over SFT, teacher {ratio_params:.1f}x, {shape}",
                        f"{online_s * 1e3:.0f} ms vs {ours_s * 1e3:.0f} ms", "",
                        f"{online_over:+.0%}", f"FLOP expectation {expected:+.0%}"])
            append_row([f"offline top-{args.topk} KD overhead over SFT, {shape}",
                        f"{offline_s * 1e3:.0f} ms vs {ours_s * 1e3:.0f} ms", "",
                        f"{offline_over:+.1%}", "target <= +10%"])


if __name__ == "__main__":
    main()
