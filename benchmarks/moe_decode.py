"""MoE decode on CPU: a small Qwen3-MoE vs a dense model of the same active
parameters, both through our Sampler, and both vs transformers `generate`; the
same for a small DeepSeek-V3-shaped model (MLA + MoE); and the latent cache of
the real DeepSeek-V3 against a full K/V cache (exact arithmetic, bf16).

  decode   Qwen3-MoE-shaped model (random weights; default 6 layers, hidden 256,
           16 experts of width 128, top-2) and a dense Qwen3 model with the same
           attention and an MLP of k x 128 = 256 (same active parameters up to the
           router's hidden x experts per layer). Greedy, float32, same prompts,
           batch and new tokens on every side; each side warmed up (compiled) first,
           then `--rounds` rounds that run every side once (median per side), so
           drift on a shared machine hits all sides alike. tokens/s = batch x new
           tokens / wall time of one generate call (prefill included, as in
           decode_vs_transformers.py). The token streams of ours and transformers
           on the same checkpoint are compared row by row (first divergence shown).
           Also ours on the same MoE weights with dispatch="dense" (every expert on
           every token), and transformers on the dense twin (--no-hf-dense skips it).
           Torch runs --threads threads (default: one per core).
  blocks   where an MoE decode step's time goes on CPU: one jitted feed-forward
           of a decode step's [batch, hidden] tokens — the routed experts via
           ragged_dot (our default), via dispatch="dense" (every expert on every
           token), and the dense MLP of the same active width; plus the router +
           sort alone and ragged_dot alone.
  deepseek DeepSeek-V3-shaped small model (MLA with q/kv ranks and YaRN, first
           layer dense, routed experts in groups + one shared): ours vs transformers.
  cache    DeepSeek-V3's latent cache vs a full K/V cache per token, per 32k-token
           row, and rows of 32k that fit in 80 GB; checked against our
           `kv_cache.bytes_per_token` and the shapes `KVCache.init` builds.

  python benchmarks/moe_decode.py [--threads 1] [--parts decode,blocks,deepseek,cache]
                                  [--quick]

On a loaded machine use --threads 1: torch with one thread per core collapses
when the load average passes the core count (BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from distill_jax import models, sampling
from distill_jax.models import kv_cache
from distill_jax.models import moe as moe_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine  # noqa: E402


# ------------------------------------------------------------------ configs
def moe_config(args) -> models.ModelConfig:
    base = models.get_config("tiny-qwen3-moe")
    return base.replace(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_layers=args.layers, num_heads=8, num_kv_heads=4, head_dim=args.hidden // 8,
        max_position_embeddings=4096, name="bench-qwen3-moe",
        moe=dataclasses.replace(base.moe, num_experts=args.experts,
                                experts_per_token=args.top_k,
                                expert_intermediate_size=args.expert_width))


def dense_twin(cfg: models.ModelConfig) -> models.ModelConfig:
    """The same attention (Qwen3: q/k norms, GQA) with a dense SwiGLU of k x the
    expert width: per token the same FFN parameters as the k experts it reaches."""
    return cfg.replace(model_type="qwen3", moe=None, name="bench-qwen3-dense",
                       intermediate_size=cfg.moe.experts_per_token
                       * cfg.moe.expert_intermediate_size)


def deepseek_config(args) -> models.ModelConfig:
    base = models.get_config("tiny-deepseek-v3")
    h = args.hidden
    # YaRN x4 over a quarter of the context, so rows run past the original positions
    # (and transformers sees factor = max_position_embeddings / original).
    max_pos = max(256, -(-(args.prompt_length + args.new_tokens) // 4) * 4)
    return base.replace(
        vocab_size=args.vocab, hidden_size=h, intermediate_size=2 * h,
        num_layers=args.layers, num_heads=8, num_kv_heads=8, head_dim=32 + 16,
        max_position_embeddings=max_pos, name="bench-deepseek-v3",
        rope_scaling=dataclasses.replace(base.rope_scaling, factor=4.0,
                                         original_max_position_embeddings=max_pos // 4),
        moe=dataclasses.replace(base.moe, num_experts=args.experts, experts_per_token=args.top_k,
                                expert_intermediate_size=args.expert_width,
                                num_groups=4, topk_groups=2),
        mla=models.MlaConfig(kv_lora_rank=h // 4, qk_nope_head_dim=32, qk_rope_head_dim=16,
                             v_head_dim=32, q_lora_rank=3 * h // 8))


# ------------------------------------------------------------------ helpers
def load_reference(cfg, params, experts=None):
    """Our random weights saved as an HF checkpoint and loaded by transformers
    (`experts`: its experts_implementation; None = its default)."""
    extra = {} if experts is None or cfg.moe is None else {"experts_implementation": experts}
    with tempfile.TemporaryDirectory() as d:
        models.save_hf_checkpoint(d, cfg, params)
        ref = transformers.AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="sdpa", **extra).eval()
    return ref


def agreement(ours, theirs, prompt_length) -> str:
    """'8/8 rows identical', or how many agree and where the first divergence is."""
    same, first = 0, []
    for i, o in enumerate(ours):
        a, b = o[0].token_ids, theirs[i, prompt_length:].tolist()
        if a == b:
            same += 1
        else:
            first.append(next(t for t in range(len(a)) if a[t] != b[t]))
    text = f"{same}/{len(ours)} rows identical"
    if first:
        text += f" (others diverge at new token {', '.join(map(str, sorted(first)))})"
    return text


def mparams(n: int) -> str:
    return f"{n / 1e6:.2f}M"


# ------------------------------------------------------------------ parts
def part_decode(args, prompts, rows):
    cfg = moe_config(args)
    dense = dense_twin(cfg)
    params = models.init_params(cfg, jax.random.key(0))
    dense_params = models.init_params(dense, jax.random.key(0))
    act_moe, act_dense = models.count_active_params(cfg), models.count_active_params(dense)
    router = cfg.num_layers * cfg.hidden_size * cfg.moe.num_experts
    assert act_moe - act_dense == router, (act_moe, act_dense, router)
    print(f"{cfg.name}: {mparams(models.count_params(cfg))} params, {mparams(act_moe)} active "
          f"({cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.moe.num_experts} experts "
          f"of {cfg.moe.expert_intermediate_size}, top-{cfg.moe.experts_per_token})")
    print(f"{dense.name}: {mparams(models.count_params(dense))} params = active "
          f"(MLP {dense.intermediate_size}); active differ by the routers only: "
          f"{router:,} ({100 * router / act_dense:.2f}%)")
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    # moe_alldense: the same MoE weights with dispatch="dense" (every expert on every
    # token, weighted by the routing), which XLA:CPU runs faster than ragged_dot.
    all_experts = cfg.replace(moe=dataclasses.replace(cfg.moe, dispatch="dense"))
    samplers = {name: sampling.Sampler(c, p, length_buckets=(args.prompt_length,),
                                       num_slots=args.batch)
                for name, c, p in (("moe", cfg, params), ("dense", dense, dense_params),
                                   ("moe_alldense", all_experts, params))}
    refs = {"moe": load_reference(cfg, params, args.hf_experts)}
    if args.hf_dense:
        refs["dense"] = load_reference(dense, dense_params)
    experts_impl = refs["moe"].config._experts_implementation
    ids = torch.tensor(prompts)
    outputs = {}

    def ours(name):
        def run():
            outputs[name] = samplers[name].generate(prompts, sp)
        return run

    def theirs(name):
        def run():
            with torch.inference_mode():
                outputs["hf_" + name] = refs[name].generate(
                    input_ids=ids, max_new_tokens=args.new_tokens, do_sample=False,
                    eos_token_id=None, pad_token_id=0)
        return run

    steps = {"moe": ours("moe"), "dense": ours("dense"), "moe_alldense": ours("moe_alldense"),
             "hf_moe": theirs("moe")}
    if args.hf_dense:
        steps["hf_dense"] = theirs("dense")
    secs = interleaved(steps, args.rounds, warmups=1)
    new = args.batch * args.new_tokens
    tps = {k: new / s for k, s in secs.items()}
    check = agreement(outputs["moe"], outputs["hf_moe"], args.prompt_length)
    setting = (f"greedy, f32, batch {args.batch}, prompt {args.prompt_length}, "
               f"{args.new_tokens} new")
    print(f"  {setting}, {args.rounds} alternating rounds (median):")
    for k in steps:
        print(f"    {k:12s} {secs[k]:7.2f} s  {tps[k]:8,.0f} tok/s")
    print(f"    ours MoE / ours dense: {tps['moe'] / tps['dense']:.2f}x; ours MoE / transformers "
          f"MoE ({experts_impl} experts): {tps['moe'] / tps['hf_moe']:.2f}x; {check}")
    rows.append([f"{cfg.name} ({mparams(act_moe)} active of {mparams(models.count_params(cfg))})"
                 f" vs {dense.name} ({mparams(act_dense)}), ours both, {setting}",
                 f"{tps['moe']:,.0f} vs {tps['dense']:,.0f} tok/s", "",
                 f"{tps['moe'] / tps['dense']:.2f}x", ""])
    rows.append([f"{cfg.name}: ours vs transformers generate ({experts_impl} experts), {setting}",
                 f"{tps['moe']:,.0f} tok/s", f"{tps['hf_moe']:,.0f} tok/s",
                 f"{tps['moe'] / tps['hf_moe']:.2f}x", check])
    acheck = agreement(outputs["moe_alldense"],
                       np.array([[0] * args.prompt_length + o[0].token_ids
                                 for o in outputs["moe"]]), args.prompt_length)
    print(f"    ours MoE dispatch=dense / ours MoE ragged: "
          f"{tps['moe_alldense'] / tps['moe']:.2f}x; vs ragged tokens: {acheck}")
    rows.append([f"{cfg.name}: ours, dispatch=dense (every expert) vs ragged (default), "
                 f"{setting}", f"{tps['moe_alldense']:,.0f} vs {tps['moe']:,.0f} tok/s", "",
                 f"{tps['moe_alldense'] / tps['moe']:.2f}x", acheck])
    if args.hf_dense:
        dcheck = agreement(outputs["dense"], outputs["hf_dense"], args.prompt_length)
        print(f"    ours dense / transformers dense: {tps['dense'] / tps['hf_dense']:.2f}x; "
              f"{dcheck}")
        rows.append([f"{dense.name}: ours vs transformers generate, {setting}",
                     f"{tps['dense']:,.0f} tok/s", f"{tps['hf_dense']:,.0f} tok/s",
                     f"{tps['dense'] / tps['hf_dense']:.2f}x", dcheck])
    return cfg, params


def part_blocks(args, cfg, params, rows):
    """One decode step's feed-forward of `batch` tokens, per layer, jitted."""
    moe = cfg.moe
    d, f, k = cfg.hidden_size, moe.expert_intermediate_size, moe.experts_per_token
    layer = jax.tree_util.tree_map(lambda a: a[0], params["layers"]["mlp"])
    gate, up, down, router = (layer[n] for n in ("gate_kernel", "up_kernel", "down_kernel",
                                                 "router_kernel"))
    key = jax.random.key(1)
    x = jax.random.normal(key, (args.batch, d), jnp.float32)
    dense_w = [jax.random.normal(jax.random.fold_in(key, i), s, jnp.float32) * 0.02
               for i, s in enumerate([(d, k * f), (d, k * f), (k * f, d)])]
    weights, experts = moe_lib.route(x @ router, None, moe)
    group_sizes = jnp.zeros((moe.num_experts,), jnp.int32).at[experts.reshape(-1)].add(1)
    rows_sorted = x[jnp.argsort(experts.reshape(-1)) // k]

    def routed(dispatch):
        fn = moe_lib.ragged_experts if dispatch == "ragged" else moe_lib.dense_experts

        @jax.jit
        def step(x):
            w, e = moe_lib.route(x @ router, None, moe)
            return fn(x, w, e, gate, up, down)
        return lambda: step(x)

    @jax.jit
    def route_sort(x):
        w, e = moe_lib.route(x @ router, None, moe)
        order = jnp.argsort(e.reshape(-1), stable=True)
        return x[order // k], w.reshape(-1)[order]

    @jax.jit
    def ragged_only(r):
        h = jax.nn.silu(jax.lax.ragged_dot(r, gate, group_sizes)) * jax.lax.ragged_dot(
            r, up, group_sizes)
        return jax.lax.ragged_dot(h, down, group_sizes)

    @jax.jit
    def mlp(x):
        g, u, dn = dense_w
        return (jax.nn.silu(x @ g) * (x @ u)) @ dn

    variants = {
        "routed experts, ragged_dot (default)": routed("ragged"),
        "routed experts, dispatch=dense (all E)": routed("dense"),
        "  router + top-k + argsort + gather": lambda: route_sort(x),
        "  ragged_dot x3 alone": lambda: ragged_only(rows_sorted),
        f"dense SwiGLU MLP {d}->{k * f}": lambda: mlp(x),
    }
    # Alternate the variants round by round; each round times many calls.
    reps = 200
    times = {name: [] for name in variants}
    for fn in variants.values():
        jax.block_until_ready(fn())
    for _ in range(args.rounds + 2):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(reps):
                out = fn()
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / reps)
    med = {n: float(np.median(t)) for n, t in times.items()}
    base = med[f"dense SwiGLU MLP {d}->{k * f}"]
    print(f"  one layer's feed-forward of one decode step, {args.batch} tokens x {d} "
          f"({moe.num_experts} experts of {f}, top-{k}), median of {args.rounds + 2} rounds "
          f"of {reps} calls:")
    for name, s in med.items():
        print(f"    {name:42s} {1e6 * s:8.1f} us  ({s / base:5.1f}x the dense MLP)")
    rows.append([f"{cfg.name}: one layer's FFN at decode ({args.batch} tokens): ragged / "
                 "dispatch=dense / dense MLP of the active width",
                 " / ".join(f"{1e6 * med[n]:.0f} us" for n in
                            ("routed experts, ragged_dot (default)",
                             "routed experts, dispatch=dense (all E)",
                             f"dense SwiGLU MLP {d}->{k * f}")), "",
                 f"{med['routed experts, ragged_dot (default)'] / base:.1f}x", ""])


def part_deepseek(args, prompts, rows):
    cfg = deepseek_config(args)
    params = models.init_params(cfg, jax.random.key(0))
    m, mla = cfg.moe, cfg.mla
    print(f"{cfg.name}: {mparams(models.count_params(cfg))} params, "
          f"{mparams(models.count_active_params(cfg))} active ({cfg.num_layers} layers, first "
          f"{m.first_dense_layers} dense, {m.num_experts} experts of {m.expert_intermediate_size} "
          f"in {m.num_groups} groups, top-{m.experts_per_token} of the best {m.topk_groups} "
          f"groups, {m.num_shared_experts} shared; MLA kv rank {mla.kv_lora_rank}, q rank "
          f"{mla.q_lora_rank}, nope/rope/v {mla.qk_nope_head_dim}/{mla.qk_rope_head_dim}/"
          f"{mla.v_head_dim}, YaRN x{cfg.rope_scaling.factor})")
    ref = load_reference(cfg, params, args.hf_experts)
    experts_impl = ref.config._experts_implementation
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    sampler = sampling.Sampler(cfg, params, length_buckets=(args.prompt_length,),
                               num_slots=args.batch)
    ids = torch.tensor(prompts)
    outputs = {}

    def ours():
        outputs["ours"] = sampler.generate(prompts, sp)

    def theirs():
        with torch.inference_mode():
            outputs["theirs"] = ref.generate(input_ids=ids, max_new_tokens=args.new_tokens,
                                             do_sample=False, eos_token_id=None, pad_token_id=0)
    secs = interleaved({"ours": ours, "theirs": theirs}, args.rounds, warmups=1)
    new = args.batch * args.new_tokens
    check = agreement(outputs["ours"], outputs["theirs"], args.prompt_length)
    setting = (f"greedy, f32, batch {args.batch}, prompt {args.prompt_length}, "
               f"{args.new_tokens} new")
    print(f"  {setting}: ours {secs['ours']:.2f} s ({new / secs['ours']:,.0f} tok/s), "
          f"transformers ({experts_impl} experts) {secs['theirs']:.2f} s "
          f"({new / secs['theirs']:,.0f} tok/s), ratio {secs['theirs'] / secs['ours']:.2f}x; "
          f"{check}")
    rows.append([f"{cfg.name} ({mparams(models.count_active_params(cfg))} active of "
                 f"{mparams(models.count_params(cfg))}, MLA + MoE): ours vs transformers "
                 f"generate ({experts_impl} experts), {setting}",
                 f"{new / secs['ours']:,.0f} tok/s", f"{new / secs['theirs']:,.0f} tok/s",
                 f"{secs['theirs'] / secs['ours']:.2f}x", check])


def part_cache(args, rows):
    cfg = models.get_config("deepseek-v3")
    mla, layers, heads = cfg.mla, cfg.num_layers, cfg.num_heads
    bf16 = 2
    latent = layers * (mla.kv_lora_rank + mla.qk_rope_head_dim) * bf16
    full = layers * heads * (mla.qk_head_dim + mla.v_head_dim) * bf16
    padded = layers * heads * 2 * max(mla.qk_head_dim, mla.v_head_dim) * bf16
    assert latent == kv_cache.bytes_per_token(cfg, jnp.bfloat16) == 61 * 576 * 2 == 70_272
    assert full == 61 * 128 * (192 + 128) * 2 == 4_997_120
    assert padded == 61 * 128 * (192 + 192) * 2
    row_tokens = 32 * 1024
    shapes = jax.eval_shape(lambda: models.KVCache.init(cfg, 1, row_tokens, jnp.bfloat16))
    built = shapes.k.size * shapes.k.dtype.itemsize + shapes.v.size * shapes.v.dtype.itemsize
    assert built == latent * row_tokens, (built, latent * row_tokens)
    budget = 80e9
    print(f"DeepSeek-V3 cache (61 layers, 128 heads, q/k {mla.qk_head_dim}, v {mla.v_head_dim}, "
          f"kv_lora_rank {mla.kv_lora_rank}, rope {mla.qk_rope_head_dim}), bf16:")
    print(f"  {'cache':44s} {'bytes/token':>12s} {'GB per 32k row':>15s} "
          f"{'32k rows in 80 GB':>18s} {'vs latent':>10s}")
    for name, b in (("latent: 61 x (512 + 64) x 2", latent),
                    ("full K/V: 61 x 128 x (192 + 128) x 2", full),
                    ("full K/V, v padded: 61 x 128 x (192 + 192) x 2", padded)):
        per_row = b * row_tokens
        print(f"  {name:44s} {b:12,d} {per_row / 1e9:15.2f} {int(budget // per_row):18d} "
              f"{b / latent:9.1f}x")
    print(f"  (KVCache.init for one row of {row_tokens} slots: k {shapes.k.shape} "
          f"{shapes.k.dtype}, v {shapes.v.shape}: {built / 1e9:.3f} GB = latent x {row_tokens})")
    rows.append(["DeepSeek-V3 cache per token, bf16: latent vs full K/V (v padded to 192)",
                 f"{latent:,} B ({latent * row_tokens / 1e9:.2f} GB per 32k row, "
                 f"{int(budget // (latent * row_tokens))} rows in 80 GB)",
                 f"{full:,} B ({full * row_tokens / 1e9:.1f} GB per 32k row, 0 rows) "
                 f"[{padded:,} B]",
                 f"{full / latent:.1f}x [{padded / latent:.1f}x]",
                 "= kv_cache.bytes_per_token and KVCache.init shapes"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="decode,blocks,deepseek,cache",
                        help="comma-separated subset of decode,blocks,deepseek,cache")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating timed rounds of every side (median reported)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--expert-width", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--no-hf-dense", dest="hf_dense", action="store_false",
                        help="skip transformers on the dense twin (a reference point for "
                             "the MoE ratio)")
    parser.add_argument("--hf-experts", default=None,
                        help="transformers' experts_implementation (default: its own choice, "
                             "grouped_mm where torch has it; eager = a loop over the experts hit)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (XLA:CPU uses one per core)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.new_tokens, args.prompt_length, args.rounds = 2, 16, 32, 1
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    print(f"{machine()}, transformers {transformers.__version__}, torch threads "
          f"{torch.get_num_threads()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    prompts = np.random.default_rng(0).integers(
        3, args.vocab, (args.batch, args.prompt_length)).tolist()
    rows: list[list[str]] = []
    start = time.perf_counter()
    cfg = params = None
    if "decode" in parts:
        cfg, params = part_decode(args, prompts, rows)
    if "blocks" in parts:
        if cfg is None:
            cfg = moe_config(args)
            params = models.init_params(cfg, jax.random.key(0))
        part_blocks(args, cfg, params, rows)
    if "deepseek" in parts:
        part_deepseek(args, prompts, rows)
    if "cache" in parts:
        part_cache(args, rows)
    load = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in load)}\n")
    if load[0] > os.cpu_count() and torch.get_num_threads() > 1:
        print(f"note: the load average passed the {os.cpu_count()} cores: torch with "
              f"{torch.get_num_threads()} threads slows down many times over when its threads "
              "are descheduled (each op waits for the slowest); compare --threads 1\n")
    print("| what | distill_jax | transformers | ratio | check | machine |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row + [machine()]) + " |")


if __name__ == "__main__":
    main()
