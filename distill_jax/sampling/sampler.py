"""The teacher's engine: prefill + `lax.while_loop` decode over a KV cache.

One compiled program per (batch bucket, prompt-length bucket, n, max_new_tokens,
return_top_k): prompts are sorted by length, grouped, left-padded to a length
bucket, and the group padded to a batch bucket, so a long run compiles a small,
known number of programs (each new one is logged).

Inside a program: the prompts are prefilled in one forward pass into a cache of
`length_bucket + max_new_tokens` slots; each prompt's cache rows are repeated
for its n samples (one prefill per prompt, not per sample); then a while loop
samples a token per row, writes it into the cache, and stops as soon as every
row has hit a stop token or the length limit. The cache is a loop-carried
pytree, updated in place by XLA. The loop is split into a few segments
(`decode_segments`), each reading only the cache slots that can be filled by
then, so a step's cost follows the generated length rather than the maximum.

Randomness: row (prompt key i, sample j) draws step t from
fold_in(fold_in(fold_in(key(seed), i), j), t) — nothing about the batch enters.

Several hosts (a mesh over every process's devices, see `distill_jax.distributed`):
each process calls `generate` with its own prompts, at the same time; the calls
are collective. The hosts agree on the number of programs and on each one's
bucket shapes (a host with fewer prompts pads with empty rows), each host's rows
enter the program as its part of the global batch, and each gets its own rows
back. Because of the seeding above, a sample is the same whichever host, batch
or program produced it.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from distill_jax import distributed, models, sharding
from distill_jax.models import kv_cache
from distill_jax.models.transformer import segment_positions
from distill_jax.sampling.logits_processing import choose_tokens
from distill_jax.sampling.params import SamplingParams

DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclasses.dataclass
class SampleOutput:
    """One sample: generated ids (including the stop token, if any), the raw model
    log-probability of each, and why it ended ("stop" | "length")."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    top_k_ids: list[list[int]] | None = None
    top_k_logprobs: list[list[float]] | None = None
    text: str | None = None


def bucket(value: int, buckets: Sequence[int], what: str) -> int:
    """The smallest bucket >= value (a clear error past the largest)."""
    i = bisect.bisect_left(buckets, value)
    if i == len(buckets):
        raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def decode_segments(max_new_tokens: int, segments: int = 8, granule: int = 64) -> list[int]:
    """Where the decode loop's segments end (in steps), the last at max_new_tokens.

    Each segment is its own `while_loop` whose steps read a static cache window
    (prompt + segment end) instead of all prompt + max_new_tokens slots, so time
    per step follows the filled length, not the final one. At most `segments`
    segments (each a compiled loop body), each a multiple of `granule` steps;
    runs of up to `granule` new tokens have one.
    """
    size = max(granule, -(-max_new_tokens // (segments * granule)) * granule)
    return list(range(size, max_new_tokens, size)) + [max_new_tokens]


@functools.partial(jax.jit, static_argnums=2)
def _row_keys(seed, prompt_keys, n: int):
    """[prompts * n] keys: fold_in(fold_in(key(seed), prompt key), sample index)."""
    base = jax.random.key(seed)
    per_prompt = jax.vmap(lambda k: jax.random.fold_in(base, k))(prompt_keys)
    per_row = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(
        jnp.arange(n, dtype=jnp.uint32)))(per_prompt)
    return per_row.reshape(-1)


class Sampler:
    """`Sampler(cfg, params, mesh=None).generate(prompt_token_ids, SamplingParams(...))`.

    With a mesh, params are placed by their logical axes (fsdp/tensor) and rows
    over (data, fsdp); batch buckets are rounded up to multiples of the
    data-parallel size on this host. `max_batch` caps this host's rows per
    program (prompts x n).
    """

    def __init__(self, cfg: models.ModelConfig, params, mesh: jax.sharding.Mesh | None = None,
                 tokenizer=None, length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
                 batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS, max_batch: int = 64,
                 pad_id: int = 0):
        self.cfg = cfg
        self.mesh = mesh
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.length_buckets = tuple(sorted(length_buckets))
        self.process_count = 1 if mesh is None else jax.process_count()
        data_parallel = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        if data_parallel % self.process_count:
            raise ValueError(
                f"mesh {dict(mesh.shape)} splits the batch {data_parallel} ways, which does not "
                f"divide over {self.process_count} hosts; each host feeds its own prompts, so "
                "data x fsdp must be a multiple of the host count (keep `tensor` within a host)")
        local_parallel = data_parallel // self.process_count
        self.batch_buckets = tuple(sorted({-(-b // local_parallel) * local_parallel
                                           for b in batch_buckets}))
        self.max_batch = max_batch
        self.compiled: set[tuple] = set()
        self._model = models.Transformer(cfg)
        if mesh is not None:
            self._param_shardings = sharding.logical_to_shardings(
                models.param_logical_axes(cfg), mesh, shapes=params)
            params = jax.tree_util.tree_map(jax.device_put, params, self._param_shardings)
        self.params = params
        self._programs: dict[tuple, object] = {}

    # ----------------------------------------------------------------- program
    def _program(self, n: int, max_new: int, top_k_out: int):
        key = (n, max_new, top_k_out)
        if key in self._programs:
            return self._programs[key]
        model, cfg, pad_id, mesh = self._model, self.cfg, self.pad_id, self.mesh

        def constrain(cache):
            if mesh is None:
                return cache
            return jax.tree_util.tree_map(nn.with_logical_constraint, cache,
                                          kv_cache.LOGICAL_AXES)

        def run(params, tokens, segment_ids, row_valid, prompt_keys, seed, temperature, top_k,
                top_p, min_p, stop_ids):
            # tokens, segment_ids: [prompts, prompt_len]; prompt_keys: [prompts];
            # row_valid: [prompts * n].
            num_prompts, prompt_len = tokens.shape
            rows = num_prompts * n
            row_keys = _row_keys(seed, prompt_keys, n)
            positions = segment_positions(segment_ids)
            cache = constrain(kv_cache.KVCache.init(cfg, num_prompts, prompt_len + max_new))
            logits, cache = model.apply({"params": params}, tokens, positions, segment_ids,
                                        cache, method="prefill")
            # Each prompt's cache and last logits, repeated for its n samples.
            repeat = functools.partial(jnp.repeat, repeats=n, total_repeat_length=rows)
            cache = constrain(cache.repeat(n))
            last_logits = repeat(logits, axis=0)
            next_position = repeat(jnp.sum(segment_ids > 0, axis=1), axis=0).astype(jnp.int32)

            def record(s, logits, step):
                """Chooses step `step`'s token per row from `logits` and books it."""
                step_keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
                token = choose_tokens(step_keys, logits, temperature, top_k, top_p, min_p)
                log_probs = jax.nn.log_softmax(logits, axis=-1)
                active = ~s["done"]
                token = jnp.where(active, token, pad_id)
                s = dict(s)
                s["tokens"] = s["tokens"].at[:, step].set(token)
                s["logprobs"] = s["logprobs"].at[:, step].set(
                    jnp.where(active, jnp.take_along_axis(log_probs, token[:, None], -1)[:, 0], 0.0))
                if top_k_out:
                    top_lp, top_ids = jax.lax.top_k(log_probs, top_k_out)
                    s["top_ids"] = s["top_ids"].at[:, step].set(top_ids)
                    s["top_logprobs"] = s["top_logprobs"].at[:, step].set(top_lp)
                s["length"] = s["length"] + active.astype(jnp.int32)
                hit_stop = active & jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
                s["stopped"] = s["stopped"] | hit_stop
                s["done"] = s["done"] | hit_stop
                s["last_token"] = token
                s["step"] = step + 1
                return s

            state = {
                "step": jnp.int32(0),
                "cache": cache,
                "done": ~row_valid,
                "length": jnp.zeros((rows,), jnp.int32),
                "stopped": jnp.zeros((rows,), bool),
                "last_token": jnp.zeros((rows,), jnp.int32),
                "tokens": jnp.full((rows, max_new), pad_id, jnp.int32),
                "logprobs": jnp.zeros((rows, max_new), jnp.float32),
            }
            if top_k_out:
                state["top_ids"] = jnp.zeros((rows, max_new, top_k_out), jnp.int32)
                state["top_logprobs"] = jnp.zeros((rows, max_new, top_k_out), jnp.float32)
            # The first token comes from the prefill's logits; each loop iteration then
            # runs one forward for the previous token and samples the next, so no
            # forward pass is wasted after the last token.
            state = record(state, last_logits, jnp.int32(0))

            def segment(end):
                """The loop over steps < end. Step t writes slot prompt_len + t - 1 and
                reads the slots before it, so the cache window prompt_len + end covers
                every read of the segment."""
                def cond(s):
                    return (s["step"] < end) & ~jnp.all(s["done"])

                def body(s):
                    step = s["step"]
                    logits, cache = model.apply(
                        {"params": params}, s["last_token"][:, None],
                        (next_position + step - 1)[:, None], jnp.ones((rows, 1), jnp.int32),
                        s["cache"], prompt_len + step - 1, prompt_len + end, method="decode")
                    s = dict(s, cache=cache)
                    return record(s, logits[:, 0, :], step)
                return cond, body

            final = state
            for end in decode_segments(max_new):
                final = jax.lax.while_loop(*segment(end), final)
            out = {k: final[k] for k in ("tokens", "logprobs", "length", "stopped")}
            if top_k_out:
                out["top_ids"], out["top_logprobs"] = final["top_ids"], final["top_logprobs"]
            return out

        if mesh is None:
            program = jax.jit(run)
        else:
            rows = sharding.batch_sharding(mesh, 1)
            mat = sharding.batch_sharding(mesh, 2)
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            outputs = {"tokens": mat, "logprobs": mat, "length": rows, "stopped": rows}
            if top_k_out:
                outputs["top_ids"] = outputs["top_logprobs"] = sharding.batch_sharding(mesh, 3)
            program = jax.jit(run, in_shardings=(self._param_shardings, mat, mat, rows, rows,
                                                 replicated, replicated, replicated, replicated,
                                                 replicated, replicated),
                              out_shardings=outputs)
        self._programs[key] = program
        return program

    # ----------------------------------------------------------------- generate
    def generate(self, prompt_token_ids: Sequence[Sequence[int]], params: SamplingParams,
                 prompt_keys: Sequence[int] | None = None) -> list[list[SampleOutput]]:
        """outs[i][j] is sample j of prompt i. `prompt_keys[i]` (default i) seeds prompt
        i's samples: give each prompt a stable id to make results independent of how
        prompts are grouped into calls."""
        prompts = [list(map(int, p)) for p in prompt_token_ids]
        keys = list(range(len(prompts))) if prompt_keys is None else [int(k) for k in prompt_keys]
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} prompt_keys for {len(prompts)} prompts")
        limit = min(self.length_buckets[-1], self.cfg.max_position_embeddings - params.max_new_tokens)
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) > limit:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens="
                    f"{params.max_new_tokens} at most {limit} fit (largest length bucket "
                    f"{self.length_buckets[-1]}, max_position_embeddings "
                    f"{self.cfg.max_position_embeddings})")
            bad = [t for t in p if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.cfg.vocab_size}): "
                                 f"{bad[:5]}")
        bad_stops = [t for t in params.stop_token_ids if not 0 <= t < self.cfg.vocab_size]
        if bad_stops:
            raise ValueError(f"stop_token_ids {bad_stops} are not in the vocabulary "
                             f"[0, {self.cfg.vocab_size})")
        if params.n > self.max_batch:
            raise ValueError(f"n={params.n} exceeds max_batch={self.max_batch}")

        results: list[list[SampleOutput] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        per_call = max(1, self.max_batch // params.n)
        groups = [order[start:start + per_call] for start in range(0, len(order), per_call)]
        num_groups = len(groups)
        if self.process_count > 1:   # every host runs the same number of programs
            (num_groups,) = distributed.agree_max(num_groups)
        for g in range(num_groups):
            group = groups[g] if g < len(groups) else []
            outs = self._generate_group([prompts[i] for i in group], [keys[i] for i in group],
                                        params)
            for i, samples in zip(group, outs):
                results[i] = samples
        return results  # type: ignore[return-value]

    def _generate_group(self, prompts, keys, params: SamplingParams):
        n = params.n
        batch = bucket(len(prompts), self.batch_buckets, "batch size")
        length = bucket(max((len(p) for p in prompts), default=1), self.length_buckets,
                         "prompt length")
        if self.process_count > 1:   # one program shape on every host
            batch, length = distributed.agree_max(batch, length)
        tokens = np.full((batch, length), self.pad_id, np.int32)
        segment_ids = np.zeros((batch, length), np.int32)
        for row, p in enumerate(prompts):
            tokens[row, length - len(p):] = p
            segment_ids[row, length - len(p):] = 1
        row_valid = np.repeat(np.arange(batch) < len(prompts), n)
        # Row keys are derived inside the program: key(seed) -> prompt key -> sample j.
        prompt_keys = np.asarray([k & 0x7FFFFFFF for k in keys] + [0] * (batch - len(prompts)),
                                 np.uint32)
        stop_ids = np.asarray(params.stop_token_ids or (-1,), np.int32)
        signature = (batch, length, n, params.max_new_tokens, params.return_top_k,
                     len(stop_ids))
        if signature not in self.compiled:
            self.compiled.add(signature)
            logging.info("sampler: compiling program %d: prompts=%d prompt_len=%d n=%d "
                         "max_new_tokens=%d return_top_k=%d", len(self.compiled), batch, length,
                         n, params.max_new_tokens, params.return_top_k)
        program = self._program(n, params.max_new_tokens, params.return_top_k)
        rows = [tokens, segment_ids, row_valid, prompt_keys]
        if self.mesh is not None:   # this host's rows become its part of the global batch
            rows = [jax.make_array_from_process_local_data(
                sharding.batch_sharding(self.mesh, a.ndim), a) for a in rows]
        args = (self.params, *rows, np.uint32(params.seed), np.float32(params.temperature),
                np.int32(params.top_k), np.float32(params.top_p), np.float32(params.min_p),
                stop_ids)
        with sharding.mesh_context(self.mesh):
            out = program(*args)
        if self.process_count > 1:   # back to this host's rows
            from jax.experimental import multihost_utils
            out = multihost_utils.global_array_to_host_local_array(
                out, self.mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES))
        out = jax.device_get(out)

        samples: list[list[SampleOutput]] = []
        for i in range(len(prompts)):
            row_samples = []
            for j in range(n):
                r = i * n + j
                count = int(out["length"][r])
                sample = SampleOutput(
                    token_ids=out["tokens"][r, :count].tolist(),
                    logprobs=out["logprobs"][r, :count].tolist(),
                    finish_reason="stop" if out["stopped"][r] else "length")
                if params.return_top_k:
                    sample.top_k_ids = out["top_ids"][r, :count].tolist()
                    sample.top_k_logprobs = out["top_logprobs"][r, :count].tolist()
                row_samples.append(self._apply_stop_strings(sample, params))
            samples.append(row_samples)
        return samples

    def _apply_stop_strings(self, sample: SampleOutput, params: SamplingParams) -> SampleOutput:
        """Decodes text (with a tokenizer) and cuts at the first stop string, keeping it.

        Stop strings are matched on the host after decoding, so they shorten the
        output but do not end device-side generation early.
        """
        if self.tokenizer is None:
            if params.stop_strings:
                raise ValueError("stop_strings need a Sampler with a tokenizer")
            return sample
        sample.text = self.tokenizer.decode(sample.token_ids)
        if not params.stop_strings:
            return sample
        hits = [sample.text.find(s) for s in params.stop_strings]
        if not any(h >= 0 for h in hits):
            return sample
        # Smallest token prefix whose text contains a stop string (monotone: bisect).
        def contains(count):
            text = self.tokenizer.decode(sample.token_ids[:count])
            return any(s in text for s in params.stop_strings)
        lo, hi = 1, len(sample.token_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if contains(mid):
                hi = mid
            else:
                lo = mid + 1
        text = self.tokenizer.decode(sample.token_ids[:lo])
        ends = [text.find(s) + len(s) for s in params.stop_strings if s in text]
        return dataclasses.replace(
            sample, token_ids=sample.token_ids[:lo], logprobs=sample.logprobs[:lo],
            top_k_ids=None if sample.top_k_ids is None else sample.top_k_ids[:lo],
            top_k_logprobs=None if sample.top_k_logprobs is None else sample.top_k_logprobs[:lo],
            finish_reason="stop", text=text[:min(ends)])
