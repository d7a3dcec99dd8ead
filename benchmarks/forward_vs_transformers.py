"""Forward-pass throughput: distill_jax (jit, XLA) vs transformers (torch eager), same weights.

Both run the same small Llama-style model (weights exported from ours, loaded by
transformers) on the same batch, float32, on this machine's CPU. Reports tokens/s
for each and the ratio, and checks the logits agree. Appends a row to BENCHMARKS.md
with --write.

  python benchmarks/forward_vs_transformers.py [--write]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from distill_jax import models

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import append_row, bench_model_config  # noqa: E402


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up (and compile for JAX)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="append results to BENCHMARKS.md")
    args = parser.parse_args()

    cfg = bench_model_config()
    params = models.init_params(cfg, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.length))

    model = models.Transformer(cfg)
    forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
    jt = jnp.asarray(tokens, jnp.int32)
    ours_s = _timeit(lambda: forward(params, jt).block_until_ready(), args.repeats)

    with tempfile.TemporaryDirectory() as d:
        models.save_hf_checkpoint(d, cfg, params)
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="sdpa").eval()
    tt = torch.tensor(tokens)

    def torch_forward():
        with torch.inference_mode():
            return ref(input_ids=tt).logits

    ref_s = _timeit(torch_forward, args.repeats)
    diff = float(np.abs(np.asarray(forward(params, jt)) - torch_forward().numpy()).max())

    n_tokens = args.batch * args.length
    print(f"distill_jax : {ours_s * 1e3:8.1f} ms  ({n_tokens / ours_s:,.0f} tok/s)")
    print(f"transformers: {ref_s * 1e3:8.1f} ms  ({n_tokens / ref_s:,.0f} tok/s)")
    print(f"speed ratio (ours / transformers): {ref_s / ours_s:.2f}x   max |logit diff| {diff:.1e}")
    if args.write:
        append_row([f"forward, {cfg.name}, f32, batch {args.batch} x {args.length}",
                    f"{n_tokens / ours_s:,.0f} tok/s", f"{n_tokens / ref_s:,.0f} tok/s",
                    f"{ref_s / ours_s:.2f}x", f"{diff:.1e}"])

if __name__ == "__main__":
    main()
