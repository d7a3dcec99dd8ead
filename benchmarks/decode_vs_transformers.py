"""Greedy decode throughput: distill_jax Sampler vs transformers `generate`, same weights.

Both decode the same prompts greedily with a KV cache (ours: one compiled
prefill + while_loop; transformers: eager torch with its dynamic cache), CPU,
float32. Generated tokens are checked equal. Reports new tokens/s and the ratio;
--write appends a row to BENCHMARKS.md.

  python benchmarks/decode_vs_transformers.py [--write]
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_row, bench_model_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    cfg = bench_model_config()
    params = models.init_params(cfg, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(
        3, cfg.vocab_size, (args.batch, args.prompt_length)).tolist()
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    sampler = sampling.Sampler(cfg, params, length_buckets=(args.prompt_length,),
                               batch_buckets=(args.batch,), max_batch=args.batch)
    sampler.generate(prompts, sp)  # compile
    start = time.perf_counter()
    ours = sampler.generate(prompts, sp)
    ours_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as d:
        models.save_hf_checkpoint(d, cfg, params)
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = torch.tensor(prompts)
    kwargs = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None,
                  pad_token_id=0)
    with torch.inference_mode():
        ref.generate(input_ids=ids[:, :8], max_new_tokens=4, do_sample=False, eos_token_id=None,
                     pad_token_id=0)  # warm-up
        start = time.perf_counter()
        out = ref.generate(input_ids=ids, **kwargs)
        ref_s = time.perf_counter() - start
    same = sum(o[0].token_ids == out[i, args.prompt_length:].tolist() for i, o in enumerate(ours))

    new = args.batch * args.new_tokens
    print(f"distill_jax Sampler   : {ours_s:6.2f} s ({new / ours_s:,.0f} new tok/s)")
    print(f"transformers generate : {ref_s:6.2f} s ({new / ref_s:,.0f} new tok/s)")
    print(f"ratio (ours / transformers): {ref_s / ours_s:.2f}x; identical rows {same}/{args.batch}")
    if args.write:
        append_row([f"greedy decode, {cfg.name}, f32, batch {args.batch}, prompt "
                    f"{args.prompt_length}, {args.new_tokens} new", f"{new / ours_s:,.0f} tok/s",
                    f"{new / ref_s:,.0f} tok/s", f"{ref_s / ours_s:.2f}x",
                    f"{same}/{args.batch} rows identical"])

if __name__ == "__main__":
    main()
