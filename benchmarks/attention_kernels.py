"""Attention kernels on CPU: `xla` (dense [L, L] scores) against `blockwise` (pure-JAX
flash attention, custom VJP, blocks of DEFAULT_BLOCK = 512), and blockwise with
smaller blocks (BLOCKS, 256) as a third variant. Four parts, chosen with --parts:

  threshold  forward + backward of the attention op alone (jit of grad w.r.t. q, k, v
             of sum(attention(q, k, v) * w)), batch 1, 8 heads / 2 kv heads of 64,
             float32, at L = 128 ... 4096 (the doubling grid 256 ... 4096 and lengths
             between, which blockwise pads up to a multiple of its block): for
             `attention.AUTO_XLA_MAX_LEN`, the largest L up to which xla is faster or
             equal, and the single threshold that costs least over all these L.
  step       time of a whole training step (`Trainer`, AdamW, remat "full",
             loss_chunk_size 1024) of a small Llama-style model at 1k / 4k / 8k tokens
             in one row, the same params for every variant (`attention_impl` set with
             cfg.replace), the steps alternating in rounds.
  memory     the peak of one such step, xla and blockwise (block 512) at each length in
             a fresh process, measured by benchmarks/memory_plan_vs_measured.py's
             `measure` (live state + growth of the resident-set high-water mark, glibc
             mmapping every large buffer), next to XLA's buffer assignment. A measuring
             process is killed as soon as its resident set passes --guard-gib (10.5 GiB;
             the xla step at 8k tokens is), and the step part skips a variant whose XLA
             buffers x RISK pass it.
  fit        the longest row whose step fits in --budget-gib (8 GiB): a fit through
             the measured peaks (linear for blockwise, quadratic for xla), and a
             bisection over row lengths (multiples of 512) of XLA's buffer assignment
             of the compiled step (compile only, nothing runs) scaled by measured / XLA
             at the longest measured length; for xla, a fresh-process measurement at
             the smaller of the two (a blockwise step at its limit would take hours).

Every timing alternates the variants in the same process, round by round; the
reported figure is the median over rounds (ratios: median of the per-round ratios).

  python benchmarks/attention_kernels.py [--parts threshold,step,memory,fit]
      [--rounds 5] [--step-rounds 3] [--write] [--json FILE]

All four parts take about 14 minutes on 2 cores.

--write prints the results as markdown tables for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GIB = 1024 ** 3
MIB = 1024 ** 2
KERNELS = ("xla", "blockwise")
# The asked-for grid (256 ... 4096, doubling) plus lengths between, where blockwise pads
# the row up to a multiple of its block.
THRESHOLD_LENGTHS = (128, 256, 384, 512, 640, 768, 896, 1024, 1536, 2048, 4096)
STEP_LENGTHS = (1024, 4096, 8192)
MEMORY_LENGTHS = (1024, 2048, 4096, 8192)   # 2048: a third point for the quadratic fit
# The step part runs in this process, without a watchdog: a variant whose XLA buffers
# times RISK pass --guard-gib is not run there. Measured peaks of the xla kernel's
# step are 1.7-1.9x its XLA buffers at 1k-5.6k tokens; at 8k an uncapped first attempt
# passed 20 GiB of resident memory (2.3x) before it was killed.
RISK = 2.5
# Block sizes of blockwise timed besides the dispatch's DEFAULT_BLOCK (512).
BLOCKS = (256,)
LOSS_CHUNK = 1024
# The training-step model: Llama-style, 4 layers of width 256, 8 heads / 2 kv heads of 32.
MODEL = dict(model_type="llama", vocab_size=4096, hidden_size=256, intermediate_size=1024,
             num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32, dtype="float32",
             param_dtype="float32", remat_policy="full", name="attn-bench-llama")
# As in memory_plan_vs_measured.run_cases: CPU only, every buffer over 64 KiB mmapped
# (freed memory leaves the resident set) and never trimmed lazily.
MEASURE_ENV = dict(JAX_PLATFORMS="cpu", XLA_FLAGS="", MALLOC_MMAP_THRESHOLD_="65536",
                   MALLOC_TRIM_THRESHOLD_="0")


def model_config(impl: str):
    from distill_jax import models
    return models.ModelConfig(**MODEL).replace(attention_impl=impl)


def _alternate(fns: dict, rounds: int, repeats: int = 1) -> dict:
    """Seconds per call of each function, in rounds that run every function once
    (`repeats` calls in a row, timed together), so the slow drifts of a shared machine
    hit all of them alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - start) / repeats)
    return times


def _summary(times: dict, length: int) -> dict:
    """Medians per variant, and median (min, max) of per-round ratios: each variant over
    xla, and each blockwise block size over the default blockwise."""
    import numpy as np
    row = {"length": length, "rounds": len(next(iter(times.values()))), "s": {}, "ratio": {}}
    for name, t in times.items():
        row["s"][name] = float(np.median(t))
    pairs = [(n, "xla") for n in times if n != "xla"] + [
        (n, "blockwise") for n in times if n.startswith("blockwise_b")]
    for num, den in pairs:
        if num in times and den in times:
            r = np.array(times[num]) / np.array(times[den])
            row["ratio"][f"{num}/{den}"] = [float(np.median(r)), float(r.min()), float(r.max())]
    return row


def _ratio_text(row: dict) -> str:
    return ", ".join(f"{key} {m:.2f} ({lo:.2f}-{hi:.2f})"
                     for key, (m, lo, hi) in row["ratio"].items())


# ------------------------------------------------------------------ 1. the auto threshold

def threshold(lengths=THRESHOLD_LENGTHS, rounds: int = 5, heads: int = 8, kv_heads: int = 2,
              head_dim: int = 64, sample_s: float = 0.25) -> list[dict]:
    """`xla` and `blockwise` through the dispatch (`self_attention`, block 512), and
    blockwise with the other block sizes in BLOCKS; each timed sample runs enough
    calls to take about `sample_s` seconds."""
    import jax
    import jax.numpy as jnp

    from distill_jax.models import attention

    rows = []
    for length in lengths:
        keys = jax.random.split(jax.random.key(length), 4)
        q = jax.random.normal(keys[0], (1, length, heads, head_dim), jnp.float32)
        k = jax.random.normal(keys[1], (1, length, kv_heads, head_dim), jnp.float32)
        v = jax.random.normal(keys[2], (1, length, kv_heads, head_dim), jnp.float32)
        w = jax.random.normal(keys[3], (1, length, heads, head_dim), jnp.float32)
        seg = jnp.ones((1, length), jnp.int32)
        kernels = {"xla": lambda q, k, v: attention.self_attention(q, k, v, seg, "xla"),
                   "blockwise": lambda q, k, v: attention.self_attention(q, k, v, seg,
                                                                         "blockwise")}
        for block in BLOCKS:
            kernels[f"blockwise_b{block}"] = functools.partial(
                lambda q, k, v, block: attention.blockwise_attention(q, k, v, seg, block),
                block=block)
        fns, grads, first = {}, {}, {}
        for name, kernel in kernels.items():
            def loss(q, k, v, kernel=kernel):
                return jnp.sum(kernel(q, k, v) * w)
            f = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
            grads[name] = jax.block_until_ready(f(q, k, v))         # warm-up call
            fns[name] = lambda f=f: jax.block_until_ready(f(q, k, v))
            start = time.perf_counter()
            fns[name]()
            first[name] = time.perf_counter() - start
        repeats = max(1, round(sample_s / max(first.values())))
        ref = grads["xla"]
        err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                  for name, g in grads.items() if name != "xla" for a, b in zip(ref, g))
        row = _summary(_alternate(fns, rounds, repeats), length)
        row.update(grad_rel_diff=err, repeats=repeats)
        rows.append(row)
        print(f"threshold L={length}: " + ", ".join(f"{n} {t * 1e3:.1f} ms"
                                                    for n, t in row["s"].items())
              + f"; {_ratio_text(row)}; grad diff {err:.1e} (x{repeats} per sample)",
              flush=True)
    return rows


def recommend(rows: list[dict], name: str = "blockwise") -> dict:
    """For `auto` = xla up to T, then blockwise variant `name`:

    literal  the largest L such that xla is faster or equal (median name/xla >= 1)
             there and at every shorter measured L (0: at none);
    best     the T in {0} + the measured L whose choice is slowest against the faster
             kernel by the least, as a geometric mean over all measured L (ties: the
             smaller T); with that mean and the worst case."""
    import numpy as np
    rows = sorted(rows, key=lambda r: r["length"])
    literal = 0
    for row in rows:
        if row["ratio"][f"{name}/xla"][0] < 1.0:
            break
        literal = row["length"]
    candidates = []
    for t in [0] + [r["length"] for r in rows]:
        slow = [(r["s"]["xla"] if r["length"] <= t else r["s"][name])
                / min(r["s"]["xla"], r["s"][name]) for r in rows]
        candidates.append((float(np.exp(np.mean(np.log(slow)))), t, float(max(slow))))
    mean, best, worst = min(candidates)
    return {"literal": literal, "best": best, "best_mean_slowdown": mean,
            "best_worst_slowdown": worst,
            "candidates": {str(t): [m, w] for m, t, w in candidates}}


# ------------------------------------------------------------------ 2. training step time

def _batch(length: int, vocab: int, rows: int = 1, seed: int = 0) -> dict:
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, length + 1)).astype(np.int32)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:],
            "loss_mask": np.ones((rows, length), np.int32),
            "segment_ids": np.ones((rows, length), np.int32),
            "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1))}


def _trainer(impl: str):
    import ml_collections

    from distill_jax.training.optimizer import make_optimizer
    from distill_jax.training.trainer import Trainer
    opt = ml_collections.ConfigDict(dict(learning_rate=1e-4, warmup_steps=0,
                                         final_lr_fraction=0.1, weight_decay=0.0, b1=0.9,
                                         b2=0.95, eps=1e-8, max_grad_norm=1.0))
    tx, schedule = make_optimizer(opt, 100)
    return Trainer(model_config(impl), tx, schedule, loss_chunk_size=LOSS_CHUNK)


@contextlib.contextmanager
def _block_size(block: int | None):
    """While a step is traced: the model's blockwise attention with `block`-sized blocks
    (the model calls attention.self_attention, whose default is DEFAULT_BLOCK)."""
    from distill_jax.models import attention
    if block is None:
        yield
        return
    original = attention.self_attention
    attention.self_attention = functools.partial(original, block_size=block)
    try:
        yield
    finally:
        attention.self_attention = original


def step_times(lengths=STEP_LENGTHS, rounds: int = 3, blocks=BLOCKS,
               guard: float = 10.5 * GIB) -> list[dict]:
    """A variant whose XLA buffers times RISK pass `guard` is not run (this process has
    no watchdog). The first step of each variant is a warm-up; when the slowest
    variant's takes over 10 s, the first steps also count as round 1 and one round fewer
    is run (a slow first step of a fast variant is then one sample of several, which the
    medians ride over)."""
    import jax
    import jax.numpy as jnp

    from distill_jax import models

    params = models.init_params(model_config("xla"), jax.random.key(0))
    variants = {"xla": ("xla", None), "blockwise": ("blockwise", None),
                **{f"blockwise_b{b}": ("blockwise", b) for b in blocks}}
    rows = []
    for length in lengths:
        batch = {k: jnp.asarray(v) for k, v in _batch(length, MODEL["vocab_size"]).items()}
        fns, first_loss, first_s, skipped = {}, {}, {}, {}
        for name, (impl, block) in variants.items():
            trainer = _trainer(impl)
            with _block_size(block):
                step = jax.jit(trainer._train_step, donate_argnums=(0,)).lower(
                    *_abstract_step_inputs(trainer, length), None).compile()
            buffers = _buffer_bytes(step)
            if buffers * RISK > guard:
                skipped[name] = buffers
                print(f"step L={length}: {name} not run: XLA buffers {buffers / GIB:.1f} GiB "
                      f"x {RISK} > {guard / GIB:g} GiB", flush=True)
                continue
            state = trainer.init_state(jax.tree_util.tree_map(jnp.copy, params))
            holder = {"state": state}

            def run(step=step, holder=holder):
                holder["state"], metrics = step(holder["state"], batch, None)
                jax.block_until_ready((holder["state"], metrics))
                return metrics
            start = time.perf_counter()
            first_loss[name] = float(run()["loss"])
            first_s[name] = time.perf_counter() - start
            fns[name] = run
        if not fns:
            rows.append({"length": length, "s": {}, "ratio": {}, "first_loss": {},
                         "skipped": skipped, "tokens_per_s": {}})
            continue
        counted = max(first_s.values()) > 10.0
        times = _alternate(fns, rounds - 1 if counted else rounds)
        if counted:
            times = {name: [first_s[name]] + t for name, t in times.items()}
        row = _summary(times, length)
        row.update(first_loss=first_loss, first_step_counted=counted, skipped=skipped,
                   tokens_per_s={name: length / t for name, t in row["s"].items()})
        rows.append(row)
        del fns
        print(f"step L={length}: " + ", ".join(f"{n} {t:.2f} s" for n, t in row["s"].items())
              + f"; {_ratio_text(row)}; first loss "
              + " / ".join(f"{v:.5f}" for v in first_loss.values()), flush=True)
    return rows


# ------------------------------------------------------------------ 3. peak memory

def _abstract_step_inputs(trainer, length: int):
    import jax
    import jax.numpy as jnp

    from distill_jax.training.trainer import BATCH_FIELDS
    batch = {k: jax.ShapeDtypeStruct((1, length), jnp.int32) for k in BATCH_FIELDS}
    return trainer._unsharded_abstract_state(), batch


def xla_buffers(impl: str, length: int) -> int:
    """XLA's buffer assignment of the compiled step (arguments + outputs - aliased +
    temporaries), the same sum as memory_plan_vs_measured; compiles, runs nothing."""
    import jax
    trainer = _trainer(impl)
    state, batch = _abstract_step_inputs(trainer, length)
    return _buffer_bytes(jax.jit(trainer._train_step, donate_argnums=(0,)).lower(
        state, batch, None).compile())


def _buffer_bytes(compiled) -> int:
    s = compiled.memory_analysis()
    return int(s.argument_size_in_bytes + s.output_size_in_bytes - s.alias_size_in_bytes
               + s.temp_size_in_bytes)


def measure_in_this_process(impl: str, length: int) -> dict:
    """Fresh-process body of a memory case: memory_plan_vs_measured.measure (two warm-up
    steps, then the measured one) on this model, with the loss in LOSS_CHUNK chunks."""
    import memory_plan_vs_measured as mpm

    overrides = dict(MODEL, attention_impl=impl)   # every field of mpm.MODEL replaced
    return mpm.measure(overrides, 1, length, 1, LOSS_CHUNK)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def _fresh(args: list[str], kill_at: float | None = None) -> dict:
    """This script in a fresh process (the measuring environment); the last line of its
    output, parsed. With `kill_at` (bytes), the process is killed as soon as its resident
    set passes it, and {"killed_at": bytes} is returned instead."""
    env = dict(os.environ, **MEASURE_ENV)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=out,
                                stderr=err, text=True, env=env, cwd=ROOT)
        top = 0
        while proc.poll() is None:
            top = max(top, _rss(proc.pid))
            if kill_at is not None and top > kill_at:
                proc.kill()
                proc.wait()
                return {"killed_at": top}
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{args} failed:\n{err.read()[-3000:]}")
        return json.loads(out.read().strip().splitlines()[-1])


def measure_fresh(impl: str, length: int, guard: float) -> dict:
    """One memory case in a fresh process, killed if its resident set passes `guard`
    (then "measured" is None and "killed_above" says where)."""
    start = time.perf_counter()
    r = _fresh(["--measure", json.dumps([impl, length])], kill_at=guard)
    if "killed_at" in r:
        r = {"measured": None, "live_state": None, "killed_above": r["killed_at"]}
    r.update(impl=impl, length=length, seconds=time.perf_counter() - start)
    if "xla" not in r:
        r["xla"] = _fresh(["--buffers", json.dumps([impl, length])])
    shown = (f"killed when its RSS passed {r['killed_above'] / GIB:.1f} GiB"
             if r["measured"] is None else f"{r['measured'] / MIB:,.0f} MiB")
    print(f"memory {impl} L={length}: measured {shown}, XLA buffers {r['xla'] / MIB:,.0f} MiB "
          f"({r['seconds']:.0f} s)", flush=True)
    return r


def memory(lengths=MEMORY_LENGTHS, guard_gib: float = 10.5) -> list[dict]:
    rows = []
    for length in lengths:
        for impl in KERNELS:
            rows.append(measure_fresh(impl, length, guard_gib * GIB))
    return rows


# ------------------------------------------------------------------ 4. longest row in budget

def _fit_limit(points: list[tuple[int, float]], degree: int, budget: float) -> tuple:
    """Least-squares polynomial peak(L) through the measured points; the largest L with
    peak(L) <= budget (a multiple of 512 below the real root), and the coefficients."""
    import numpy as np
    ls = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)
    coef = np.polyfit(ls, ys, degree)           # highest power first
    roots = np.roots(coef - np.r_[np.zeros(degree), budget])
    real = [r.real for r in roots if abs(r.imag) < 1e-6 and r.real > 0]
    limit = min(real) if real else None
    return (None if limit is None else int(limit // 512 * 512)), coef.tolist()


def bisect_in_this_process(impl: str, budget: float, scale: float, start: int) -> dict:
    """Largest multiple of 512 whose step's XLA buffers x `scale` fit `budget`: doubling
    (or halving) from `start` to bracket it, then bisection. Compiles only."""
    probes = {}

    def fits(length):
        probes[length] = xla_buffers(impl, length)
        return probes[length] * scale <= budget

    def result(limit):
        return {"limit": limit, "probes": {str(k): v for k, v in sorted(probes.items())}}

    if fits(start):
        lo, hi = start, start * 2
        while fits(hi):
            lo, hi = hi, hi * 2
            if hi > 2 ** 21:
                raise RuntimeError("no upper bound under 2M tokens")
    else:
        lo, hi = start // 2 // 512 * 512, start
        while not fits(lo):
            if lo == 512:
                return result(0)
            lo, hi = max(512, lo // 2 // 512 * 512), lo
    while hi - lo > 512:
        mid = (lo + hi) // 2 // 512 * 512
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return result(lo)


def fit(mem_rows: list[dict], budget_gib: float = 8.0, guard_gib: float = 10.5,
        confirm=("xla",)) -> list[dict]:
    """Per kernel: the fit through the measured peaks, the bisection of XLA's buffers
    scaled by measured / XLA at the longest measured length, and for the kernels in
    `confirm` a fresh-process measurement at the smaller of the two limits."""
    budget = budget_gib * GIB
    rows = []
    for impl in KERNELS:
        measured = sorted((r["length"], r["measured"], r["xla"]) for r in mem_rows
                          if r["impl"] == impl and r["measured"] is not None)
        degree = 1 if impl == "blockwise" else 2
        if not measured:
            print(f"fit {impl}: no measured peak", flush=True)
            continue
        fit_limit, coef = (_fit_limit([(m[0], m[1]) for m in measured], degree, budget)
                           if len(measured) > degree else (None, None))
        longest = measured[-1]
        scale = longest[1] / longest[2]                 # measured / XLA at the longest L
        start = time.perf_counter()
        b = _fresh(["--bisect", json.dumps([impl, budget, scale, longest[0]])])
        row = {"impl": impl, "fit_limit": fit_limit, "fit_coef": coef, "fit_degree": degree,
               "fit_points": [m[0] for m in measured], "bisect_limit": b["limit"],
               "bisect_probes": b["probes"], "scale": scale,
               "seconds": time.perf_counter() - start}
        print(f"fit {impl}: {'linear' if degree == 1 else 'quadratic'} through "
              f"{row['fit_points']} -> {fit_limit}; bisection of XLA buffers x {scale:.2f} -> "
              f"{b['limit']} ({len(b['probes'])} compiles, {row['seconds']:.0f} s)", flush=True)
        if impl in confirm:
            at = min(x for x in (fit_limit, b["limit"]) if x is not None)
            row["confirm"] = measure_fresh(impl, at, guard_gib * GIB)
        rows.append(row)
    return rows


# ------------------------------------------------------------------ report

def markdown(res: dict) -> str:
    out = []
    if "threshold" in res:
        rows = res["threshold"]
        names = list(rows[0]["s"])
        keys = list(rows[0]["ratio"])
        out += ["| L | " + " | ".join(f"{n} ms" for n in names) + " | "
                + " | ".join(f"{k} (range)" for k in keys) + " | max grad diff (rel.) |",
                "|---|" + "---|" * (len(names) + len(keys) + 1)]
        for r in rows:
            out.append(f"| {r['length']:,} | "
                       + " | ".join(f"{r['s'][n] * 1e3:.1f}" for n in names) + " | "
                       + " | ".join(_ratio_cell(r, k) for k in keys)
                       + f" | {r['grad_rel_diff']:.1e} |")
        out.append("")
        for n in names[1:]:
            rec = recommend(rows, n)
            out.append(f"- auto = xla up to T, then {n}: xla is faster or equal at every L up to "
                       f"{rec['literal']} (0: at none); the T with the least geometric-mean "
                       f"slowdown over these L is {rec['best']} "
                       f"({rec['best_mean_slowdown']:.2f}x, "
                       f"worst {rec['best_worst_slowdown']:.2f}x)")
        out.append("")
    if "step" in res:
        rows = res["step"]
        names = list(dict.fromkeys(n for r in rows for n in [*r["s"], *r.get("skipped", {})]))
        keys = list(dict.fromkeys(k for r in rows for k in r["ratio"]))
        out += ["| tokens per row | " + " | ".join(f"{n} step s (tok/s)" for n in names) + " | "
                + " | ".join(f"{k} (range)" for k in keys) + " | first loss ("
                + " / ".join(names) + ") |", "|---|" + "---|" * (len(names) + len(keys) + 1)]

        def step_cell(r, n):
            if n in r["s"]:
                return f"{r['s'][n]:.2f} ({r['tokens_per_s'][n]:.0f})"
            if n in r.get("skipped", {}):
                return f"not run (XLA buffers {r['skipped'][n] / GIB:.1f} GiB)"
            return ""
        for r in rows:
            out.append(f"| {r['length']:,} | " + " | ".join(step_cell(r, n) for n in names)
                       + " | " + " | ".join(_ratio_cell(r, k) for k in keys) + " | "
                       + " / ".join(f"{r['first_loss'][n]:.5f}" if n in r["first_loss"]
                                    else "-" for n in names) + " |")
        out.append("")
    if "memory" in res:
        by = {(r["impl"], r["length"]): r for r in res["memory"]}
        lengths = sorted({r["length"] for r in res["memory"]})
        out += ["| tokens per row | xla peak MiB (XLA buffers) | "
                "blockwise peak MiB (XLA buffers) | xla / blockwise |", "|---|---|---|---|"]
        for length in lengths:
            x, b = by.get(("xla", length)), by.get(("blockwise", length))
            ratio = (f"{x['measured'] / b['measured']:.1f}x" if x and b and x["measured"]
                     and b["measured"] else "")
            out.append(f"| {length:,} | {_mem_cell(x)} | {_mem_cell(b)} | {ratio} |")
        out.append("")
    if "fit" in res:
        budget = res.get("budget_gib", 8.0)
        out += [f"| kernel | longest row in {budget:g} GiB: fit through the measured peaks | "
                "bisection of XLA buffers x (measured / XLA at the longest measured row) | "
                "measured there |", "|---|---|---|---|"]
        for r in res["fit"]:
            kind = "linear" if r["fit_degree"] == 1 else "quadratic"
            pts = ", ".join(f"{p:,}" for p in r["fit_points"])
            lim = "" if r["fit_limit"] is None else f"{r['fit_limit']:,}"
            c = r.get("confirm")
            confirm = (f"{c['length']:,} tokens: {_mem_cell(c)}" if c else
                       "not run (a step there takes hours on this CPU)")
            out.append(f"| {r['impl']} | {lim} ({kind} through L = {pts}) | "
                       f"{r['bisect_limit']:,} (x {r['scale']:.2f}) | {confirm} |")
        out.append("")
    return "\n".join(out)


def _ratio_cell(row: dict, key: str) -> str:
    if key not in row["ratio"]:
        return ""
    return "{:.2f} ({:.2f}-{:.2f})".format(*row["ratio"][key])


def _mem_cell(r) -> str:
    if r is None:
        return ""
    if r["measured"] is None:
        m = f"killed above {r['killed_above'] / MIB:,.0f}"
    else:
        m = f"{r['measured'] / MIB:,.0f}"
    return f"{m} ({r['xla'] / MIB:,.0f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="threshold,step,memory,fit")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the threshold part")
    parser.add_argument("--step-rounds", type=int, default=3)
    parser.add_argument("--threshold-lengths", default=",".join(map(str, THRESHOLD_LENGTHS)))
    parser.add_argument("--step-lengths", default=",".join(map(str, STEP_LENGTHS)))
    parser.add_argument("--memory-lengths", default=",".join(map(str, MEMORY_LENGTHS)))
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--guard-gib", type=float, default=10.5,
                        help="a measuring process is killed when its resident set passes this")
    parser.add_argument("--memory-json", help="the memory rows of an earlier --json, for fit")
    parser.add_argument("--json", help="write every result here")
    parser.add_argument("--write", action="store_true", help="print markdown tables")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--buffers", help=argparse.SUPPRESS)
    parser.add_argument("--bisect", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag, fn in (("measure", measure_in_this_process), ("buffers", xla_buffers),
                     ("bisect", bisect_in_this_process)):
        if getattr(args, flag):
            print(json.dumps(fn(*json.loads(getattr(args, flag)))))
            return

    parts = args.parts.split(",")
    ints = lambda text: [int(x) for x in text.split(",")]   # noqa: E731
    res, start = {"budget_gib": args.budget_gib}, time.perf_counter()
    if "threshold" in parts:
        res["threshold"] = threshold(ints(args.threshold_lengths), args.rounds)
    if "step" in parts:
        res["step"] = step_times(ints(args.step_lengths), args.step_rounds,
                                 guard=args.guard_gib * GIB)
    if "memory" in parts:
        res["memory"] = memory(ints(args.memory_lengths), args.guard_gib)
    elif args.memory_json:
        with open(args.memory_json) as f:
            res["memory"] = json.load(f)["memory"]
    if "fit" in parts:
        if "memory" not in res:
            parser.error("--parts fit needs the memory part or --memory-json")
        res["fit"] = fit(res["memory"], args.budget_gib, args.guard_gib)
    res["seconds"] = time.perf_counter() - start
    from common import machine
    res["machine"] = machine()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    print(f"\n{res['machine']}; {res['seconds']:.0f} s in all\n")
    print(markdown(res) if args.write else json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
