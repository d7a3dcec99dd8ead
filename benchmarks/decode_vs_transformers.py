"""Greedy decode: distill_jax Sampler vs transformers `generate` on the same weights.

Setup (issue 3): a ~50M-parameter Llama-style model with random weights, greedy,
batch 16, prompt 128, 256 new tokens, float32, CPU. Both sides use a KV cache
(ours: one compiled prefill + `lax.while_loop`; transformers: eager torch with
its dynamic cache). Generated tokens are compared. Also measured:
  - time per generated token at 64 / 256 / 1024 new tokens (flat = the cache works),
  - prefill cost of 16 prompts with n=1 vs n=8 samples each (one shared prefill).
--write appends the rows to BENCHMARKS.md.

  python benchmarks/decode_vs_transformers.py [--write] [--quick]
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
from common import append_row, bench_model_config, interleaved  # noqa: E402


def _ours(sampler, prompts, sp, repeats=1):
    sampler.generate(prompts, sp)  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = sampler.generate(prompts, sp)
        times.append(time.perf_counter() - start)
    return out, min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timed runs of each side in the comparison")
    parser.add_argument("--quick", action="store_true", help="smaller model and lengths")
    parser.add_argument("--parts", default="compare,lengths,prefill",
                        help="comma-separated subset of compare,lengths,prefill")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()

    parts = set(args.parts.split(","))
    cfg = bench_model_config(large=not args.quick)
    params = models.init_params(cfg, jax.random.key(0))
    n_params = models.count_params(cfg) / 1e6
    prompts = np.random.default_rng(0).integers(
        3, cfg.vocab_size, (args.batch, args.prompt_length)).tolist()
    sampler = sampling.Sampler(cfg, params, length_buckets=(args.prompt_length,),
                               num_slots=args.batch)
    print(f"model {cfg.name}: {n_params:.1f}M params; batch {args.batch}, prompt "
          f"{args.prompt_length}, greedy, float32")
    rows = []

    if "compare" in parts:
        sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
        with tempfile.TemporaryDirectory() as d:
            models.save_hf_checkpoint(d, cfg, params)
            ref = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.float32, attn_implementation="sdpa").eval()
        ids = torch.tensor(prompts)
        outputs = {}

        def ours():
            outputs["ours"] = sampler.generate(prompts, sp)

        def theirs():
            with torch.inference_mode():
                outputs["theirs"] = ref.generate(
                    input_ids=ids, max_new_tokens=args.new_tokens, do_sample=False,
                    eos_token_id=None, pad_token_id=0)
        # Alternating runs (median of each), so machine drift hits both sides alike.
        secs = interleaved({"ours": ours, "theirs": theirs}, args.rounds, warmups=1)
        ours_s, ref_s = secs["ours"], secs["theirs"]
        same = sum(o[0].token_ids == outputs["theirs"][i, args.prompt_length:].tolist()
                   for i, o in enumerate(outputs["ours"]))
        new = args.batch * args.new_tokens
        print(f"  {args.new_tokens} new tokens: distill_jax {ours_s:6.2f} s "
              f"({new / ours_s:,.0f} tok/s), transformers {ref_s:6.2f} s "
              f"({new / ref_s:,.0f} tok/s), ratio {ref_s / ours_s:.2f}x, identical rows "
              f"{same}/{args.batch}")
        rows.append([f"{cfg.name} ({n_params:.0f}M), f32, greedy, batch {args.batch}, prompt "
                     f"{args.prompt_length}, {args.new_tokens} new", f"{new / ours_s:,.0f} tok/s",
                     f"{new / ref_s:,.0f} tok/s", f"{ref_s / ours_s:.2f}x",
                     f"{same}/{args.batch} rows identical"])

    if "lengths" in parts:  # time per token vs generated length (prefill included)
        lengths = (16, 64, 256) if args.quick else (64, 256, 1024)
        per_token = {}
        for n_new in lengths:
            _, secs = _ours(sampler, prompts, sampling.SamplingParams(temperature=0.0,
                                                                      max_new_tokens=n_new))
            per_token[n_new] = secs / n_new
            print(f"  {n_new:5d} new tokens: {secs:6.2f} s, {1e3 * secs / n_new:.2f} ms per step")
        rows.append([f"{cfg.name}: ms per step at " + " / ".join(map(str, lengths))
                     + " new tokens", " / ".join(f"{1e3 * per_token[n]:.1f}" for n in lengths),
                     "", "", ""])

    if "prefill" in parts:  # one greedy new token, n=1 vs n=8 samples per prompt
        prefill = {}
        # Slots for all 8 x batch samples at once, as the static sampler had rows.
        wide = sampling.Sampler(cfg, params, length_buckets=(args.prompt_length,),
                                num_slots=8 * args.batch)
        for n in (1, 8):
            _, secs = _ours(wide, prompts, sampling.SamplingParams(n=n, temperature=0.0,
                                                                      max_new_tokens=1),
                            repeats=3)
            prefill[n] = secs
            print(f"  prefill {args.batch} prompts x {args.prompt_length} tokens, n={n}: "
                  f"{1e3 * secs:.0f} ms")
        rows.append([f"{cfg.name}: prefill of {args.batch} prompts + 1 token, n=1 vs n=8",
                     f"{1e3 * prefill[1]:.0f} ms vs {1e3 * prefill[8]:.0f} ms", "",
                     f"{prefill[8] / prefill[1]:.2f}x", ""])

    if args.write:
        for row in rows:
            append_row(row)

if __name__ == "__main__":
    main()
