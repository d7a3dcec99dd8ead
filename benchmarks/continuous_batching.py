"""Long-tailed generation: continuous slots vs static slots vs transformers `generate`.

Issue 15's workload on the ~50M benchmark model (CPU, float32, random weights):
256 prompts of 32-256 tokens, each with its own max_new_tokens drawn from a
log-normal (median 64, sigma 1, capped at 1024), no stop tokens, greedy. Sides:

  continuous     the engine: a finished slot is refilled at once; longest cap first
  continuous-fifo  the same, admitting in arrival order
  static         the same engine and slot count, slots refilled only when all of
                 them have finished (each group decodes until its longest ends)
  transformers   `generate` in batches of the slot count, in arrival order, each
                 batch to its longest cap (extra tokens are not useful)

Reported: useful generated tokens/s (the sum of the caps over wall time, prefill
and host work included), decode steps, and slot utilisation (useful decode
tokens / (decode steps x slots)). Each side runs once (each takes minutes), in the
order above, after a warm-up that compiles every engine program; the first row
of each transformers batch is compared with ours token for token.

  python benchmarks/continuous_batching.py [--prompts 256] [--slots 16] [--write]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from distill_jax import models, sampling
from distill_jax.models import attention

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_row, bench_model_config  # noqa: E402


def workload(num_prompts: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(32, 257, num_prompts)
    prompts = [rng.integers(3, vocab, int(n)).tolist() for n in lengths]
    caps = np.minimum(np.maximum(np.round(rng.lognormal(np.log(64), 1.0, num_prompts)), 1),
                      1024).astype(int)
    return prompts, [int(c) for c in caps]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--sides", default="continuous,continuous-fifo,static,transformers")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    cfg = bench_model_config(large=True)
    params = models.init_params(cfg, jax.random.key(0))
    prompts, caps = workload(args.prompts, cfg.vocab_size)
    useful = sum(caps)
    per_prompt = [sampling.SamplingParams(temperature=0.0, max_new_tokens=c) for c in caps]
    slot_len = -(-(256 + max(caps)) // attention.DECODE_BLOCK) * attention.DECODE_BLOCK
    print(f"model {cfg.name} ({models.count_params(cfg) / 1e6:.0f}M), f32; {args.prompts} "
          f"prompts of 32-256 tokens, caps median {int(np.median(caps))} mean "
          f"{np.mean(caps):.0f} max {max(caps)}; {useful} useful tokens; {args.slots} slots "
          f"of {slot_len}")

    samplers = {
        "continuous": dict(scheduler="continuous", order="longest_first"),
        "continuous-fifo": dict(scheduler="continuous", order="arrival"),
        "static": dict(scheduler="static", order="arrival"),
    }
    results, outputs = {}, {}
    sides = args.sides.split(",")
    for side in sides:
        if side == "transformers":
            continue
        sampler = sampling.Sampler(cfg, params, num_slots=args.slots, slot_len=slot_len,
                                   **samplers[side])
        # Warm-up: a prompt per length bucket, one of them as long as the longest cap,
        # so every program (each prompt bucket, each cache window) compiles before timing.
        warm = [[5] * n for n in (32, 64, 128, 256)]
        sampler.generate(warm, [sampling.SamplingParams(temperature=0.0, max_new_tokens=m)
                                for m in (2, 2, 2, max(caps))])
        start = time.perf_counter()
        outputs[side] = sampler.generate(prompts, per_prompt)
        secs = time.perf_counter() - start
        stats = sampler.stats
        assert [len(o[0].token_ids) for o in outputs[side]] == caps
        results[side] = dict(secs=secs, steps=stats["decode_steps"],
                             utilization=stats["utilization"], prefills=stats["prefill_calls"],
                             compiles=stats["compiles"])
        print(f"  {side:16s} {secs:7.1f} s  {useful / secs:7.0f} tok/s  "
              f"{stats['decode_steps']} decode steps, utilisation {stats['utilization']:.3f}, "
              f"{stats['prefill_calls']} prefill calls, {stats['compiles']} compiles")

    if "transformers" in sides:
        with tempfile.TemporaryDirectory() as d:
            models.save_hf_checkpoint(d, cfg, params)
            ref = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.float32, attn_implementation="sdpa").eval()
        same = checked = steps = 0
        start = time.perf_counter()
        for lo in range(0, len(prompts), args.slots):
            batch, batch_caps = prompts[lo:lo + args.slots], caps[lo:lo + args.slots]
            width = max(map(len, batch))
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(batch):
                ids[i, width - len(p):] = torch.tensor(p)
                mask[i, width - len(p):] = 1
            with torch.inference_mode():
                out = ref.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                   max_new_tokens=max(batch_caps), eos_token_id=None,
                                   pad_token_id=0)
            steps += max(batch_caps)
            mine = outputs.get("continuous") or next(iter(outputs.values()), None)
            if mine is not None:    # row 0 of each batch, cut to its cap
                checked += 1
                same += mine[lo][0].token_ids == out[0, width:width + batch_caps[0]].tolist()
        secs = time.perf_counter() - start
        results["transformers"] = dict(secs=secs, steps=steps, utilization=useful / (
            steps * args.slots), identical=f"{same}/{checked}")
        print(f"  {'transformers':16s} {secs:7.1f} s  {useful / secs:7.0f} tok/s  {steps} "
              f"decode steps, utilisation {useful / (steps * args.slots):.3f}; first rows "
              f"identical to ours {same}/{checked}")

    for side in sides:
        if side != "static" and "static" in results and side in results:
            print(f"  {side} / static: {results['static']['secs'] / results[side]['secs']:.2f}x")
        if side != "transformers" and "transformers" in results and side in results:
            print(f"  {side} / transformers: "
                  f"{results['transformers']['secs'] / results[side]['secs']:.2f}x")
    if args.write:
        for side, r in results.items():
            ratios = []
            if side != "static" and "static" in results:
                ratios.append(f"{results['static']['secs'] / r['secs']:.2f}x static")
            if side != "transformers" and "transformers" in results:
                ratios.append(f"{results['transformers']['secs'] / r['secs']:.2f}x transformers")
            append_row([f"{cfg.name}, {args.prompts} prompts, long-tailed caps, {args.slots} "
                        f"slots: {side}", f"{useful / r['secs']:,.0f} tok/s",
                        f"{r['steps']} steps, utilisation {r['utilization']:.3f}",
                        ", ".join(ratios) or "-",
                        f"identical {r['identical']}" if "identical" in r else ""])


if __name__ == "__main__":
    main()
