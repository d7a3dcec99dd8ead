"""The teacher's engine: `num_slots` decode rows resident on the device, refilled
as samples finish (continuous batching).

  Sampler(cfg, params, mesh=None, num_slots=64, scheduler="continuous")
      .generate(prompt_token_ids, SamplingParams | [SamplingParams per prompt])

A generate call turns its prompts into samples (n per prompt), and loops:
  1. the scheduler (`scheduler.py`) assigns waiting samples to free slots;
  2. their prompts are prefilled in batches of one length bucket (a prompt's n
     samples share one prefill) and copied into their slots, each sample drawing
     its first token (`engine.prefill_insert`);
  3. `engine.decode_steps` runs up to `steps_per_call` steps of every slot,
     stopping early when slots free up while samples wait;
  4. the tokens drawn come back to the host, finished samples leave their slots.

Programs: decode_steps is compiled once per (slot count, slot length, stop-id
width, top-k width, cache window), and prefill_insert once per prompt-length
bucket on top: a prefill always takes `prefill_batch` prompts and an insert
lists one entry per slot (padding past the arrivals). So a run compiles a small
known number of programs however the slots turn over (each new one is logged),
shared by every Sampler of the process; settings, n and seeds are traced per
slot and never recompile.

Slot length: the cache of one slot holds its prompt's length bucket plus its
max_new_tokens; by default the smallest multiple of the decode block
(`attention.DECODE_BLOCK`) that holds every request of the call, or fixed with
`slot_len`. A decode call reads the cache through a window of whole blocks that
covers the longest active slot's fill through the call, so a short tail costs
what it holds, not the capacity.

Randomness: sample j of a prompt with key k draws step t from
fold_in(fold_in(fold_in(key(seed), k), j), t). Together with the engine's
row-independent numerics, a sample is the same bits whatever slot, arrival
order, window, host count or scheduler produced it, given the same slots (and
prefill_batch) per device: XLA:CPU rounds the rows of a matrix product
differently for different row counts (see sampling/generate.py).

Several hosts (a mesh over every process's devices, see `distill_jax.distributed`):
each process calls `generate` with its own prompts, at the same time; the calls
are collective. The slots are split over the hosts (each host fills only its
own), every round the hosts agree on the prefill shapes (a host with nothing to
insert joins with padding rows), and each gets its own samples back.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import time
from typing import Iterator, Sequence

import jax
import numpy as np
from absl import logging

from distill_jax import distributed, models, sharding
from distill_jax.models import attention
from distill_jax.sampling import engine
from distill_jax.sampling.outputs import SampleOutput, apply_stop_strings
from distill_jax.sampling.params import SamplingParams
from distill_jax.sampling.scheduler import ORDERS, POLICIES, SlotScheduler

# XLA compilations per function name, from JAX's own compile events (what a test
# or a run summary counts, rather than trusting a Python-side cache of programs).
COMPILES: collections.Counter = collections.Counter()
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, fun_name="?", **kw: COMPILES.update([fun_name])
    if event == "/jax/core/compile/backend_compile_duration" else None)
ENGINE_FUNCTIONS = ("jit(init_decode_state)", "jit(prefill_insert)", "jit(decode_steps)")


def init_decode_state(cfg, num_slots: int, slot_len: int, stops: int) -> engine.DecodeState:
    return engine.DecodeState.init(cfg, num_slots, slot_len, stops)


# The engine's programs, shared by every Sampler of the process: jit keys them by the
# model (its config), the static settings and the input shapes and shardings, so a
# second Sampler of the same teacher (an evaluation per benchmark, a test) compiles
# nothing new. Both state-changing programs donate the state.
_INIT = jax.jit(init_decode_state, static_argnums=(0, 1, 2, 3))
_INSERT = jax.jit(engine.prefill_insert, static_argnums=(0,), static_argnames=("top_k_out",),
                  donate_argnums=(2,))
_DECODE = jax.jit(engine.decode_steps, static_argnums=(0,),
                  static_argnames=("num_steps", "top_k_out", "window", "pad_id"),
                  donate_argnums=(2,))


def engine_compiles() -> int:
    """XLA compilations of the engine's functions so far in this process."""
    return sum(COMPILES[name] for name in ENGINE_FUNCTIONS)

DEFAULT_LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

__all__ = ["DEFAULT_LENGTH_BUCKETS", "SampleOutput", "Sampler", "bucket"]


def bucket(value: int, buckets: Sequence[int], what: str) -> int:
    """The smallest bucket >= value (a clear error past the largest)."""
    i = bisect.bisect_left(buckets, value)
    if i == len(buckets):
        raise ValueError(f"{what} {value} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclasses.dataclass
class _Sample:
    """Sample `index` of request `request`, collected as it is drawn."""

    request: int
    index: int
    token_ids: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    top_ids: list = dataclasses.field(default_factory=list)
    top_logprobs: list = dataclasses.field(default_factory=list)


class Sampler:
    """`Sampler(cfg, params, mesh=None).generate(prompt_token_ids, SamplingParams(...))`.

    With a mesh, params are placed by their logical axes (fsdp/tensor) and slots
    over (data, fsdp, expert); `num_slots` (all hosts together) must be a multiple of that
    data-parallel size. `stats` describes the last generate call.
    """

    def __init__(self, cfg: models.ModelConfig, params, mesh: jax.sharding.Mesh | None = None,
                 tokenizer=None, num_slots: int = 64, scheduler: str = "continuous",
                 length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS, slot_len: int = 0,
                 order: str = "longest_first", prefill_batch: int = 0,
                 steps_per_call: int = engine.DECODE_STEPS, min_free: int = 1, pad_id: int = 0):
        if scheduler not in POLICIES:
            raise ValueError(f"scheduler {scheduler!r}; choose from {POLICIES}")
        if order not in ORDERS:
            raise ValueError(f"order {order!r}; choose from {ORDERS}")
        if steps_per_call < 1 or min_free < 1:
            raise ValueError(f"steps_per_call={steps_per_call} and min_free={min_free} must be "
                             ">= 1")
        self.cfg, self.mesh, self.tokenizer, self.pad_id = cfg, mesh, tokenizer, pad_id
        self.order = order
        self.scheduler, self.steps_per_call, self.min_free = scheduler, steps_per_call, min_free
        self.length_buckets = tuple(sorted(length_buckets))
        self.process_count = 1 if mesh is None else jax.process_count()
        data_parallel = sharding.data_parallel_size(mesh)
        if data_parallel % self.process_count:
            raise ValueError(
                f"mesh {dict(mesh.shape)} splits the slots {data_parallel} ways, which does not "
                f"divide over {self.process_count} hosts; each host feeds its own prompts, so "
                "data x fsdp x expert must be a multiple of the host count (keep `tensor` within a host)")
        if num_slots < 1 or num_slots % data_parallel:
            raise ValueError(
                f"num_slots={num_slots} must be a positive multiple of the data-parallel size "
                f"{data_parallel} (mesh data x fsdp x expert = {dict(mesh.shape) if mesh else {}})")
        if slot_len and slot_len % attention.DECODE_BLOCK:
            raise ValueError(f"slot_len={slot_len} must be a multiple of the decode block "
                             f"{attention.DECODE_BLOCK}")
        self.num_slots, self.slot_len = num_slots, slot_len
        self.local_slots = num_slots // self.process_count
        local_parallel = data_parallel // self.process_count
        # Prompts per prefill call on this host: one shape, so a prompt's prefill has
        # the same bits whichever prompts share it (default one per data shard).
        self.prefill_batch = prefill_batch or local_parallel
        if self.prefill_batch % local_parallel:
            raise ValueError(f"prefill_batch={prefill_batch} must be a multiple of this "
                             f"host's data-parallel shards ({local_parallel})")
        self._model = models.Transformer(cfg)
        self._param_shardings = None if mesh is None else sharding.logical_to_shardings(
            models.param_logical_axes(cfg), mesh, shapes=params)
        self.update_params(params)
        self._programs: dict[tuple, object] = {}
        self.stats: dict = {}

    def update_params(self, params) -> None:
        """The weights the next `generate` samples with (same config: the compiled
        programs are reused). With a mesh they are placed by the model's logical
        axes, which costs nothing for arrays already placed so, e.g. a training
        state's params: on-policy training samples from each step's params in
        place, without copying them or a round trip through the host."""
        if self._param_shardings is not None:
            params = jax.tree_util.tree_map(jax.device_put, params, self._param_shardings)
        self.params = params

    # ---------------------------------------------------------------- programs
    def _program(self, kind: str, *shape):
        """The engine program for one shape key (logged when new to this sampler)."""
        key = (kind, *shape)
        if key not in self._programs:
            logging.info("sampler: new program %d: %s %s", len(self._programs) + 1, kind, shape)
            if kind == "init":
                slot_len, stops = shape
                program = functools.partial(_INIT, self.cfg, self.num_slots, slot_len, stops)
            elif kind == "insert":
                program = functools.partial(_INSERT, self._model, top_k_out=shape[-1])
            else:
                window, top_k_out = shape[-2:]
                program = functools.partial(_DECODE, self._model, num_steps=self.steps_per_call,
                                            top_k_out=top_k_out, window=window,
                                            pad_id=self.pad_id)
            self._programs[key] = program
        return self._programs[key]

    def _call(self, program, *args):
        """Runs an engine program under the mesh and its logical rules (entered per
        call: `generate_stream` yields between calls, and its caller's code must not
        run inside this sampler's mesh)."""
        with sharding.mesh_context(self.mesh):
            return program(*args)

    def _global(self, tree):
        """Host-local numpy rows -> arrays over the whole mesh (each host's rows its
        part of the batch); unchanged without a mesh."""
        if self.mesh is None:
            return tree
        return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(
            sharding.batch_sharding(self.mesh, a.ndim), a), tree)

    def _local(self, tree):
        """The inverse: this host's rows of batch-sharded outputs, as numpy."""
        if self.process_count > 1:
            from jax.experimental import multihost_utils
            tree = multihost_utils.global_array_to_host_local_array(
                tree, self.mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES))
        return jax.device_get(tree)

    def _host_rows(self, count: int) -> np.ndarray:
        """Global indices of this host's rows of a batch-sharded axis of `count` rows
        (in the order its local data fills them)."""
        if self.process_count == 1:
            return np.arange(count)
        mapping = sharding.batch_sharding(self.mesh, 1).devices_indices_map((count,))
        rows = sorted({i for device, (index,) in mapping.items()
                       if device.process_index == jax.process_index()
                       for i in range(*index.indices(count))})
        return np.asarray(rows)

    # ---------------------------------------------------------------- generate
    def generate(self, prompt_token_ids: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams],
                 prompt_keys: Sequence[int] | None = None) -> list[list[SampleOutput]]:
        """outs[i][j] is sample j of prompt i. `params`: one SamplingParams for all
        prompts or one per prompt. `prompt_keys[i]` (default i) seeds prompt i's
        samples: give each prompt a stable id to make results independent of how
        prompts are grouped into calls."""
        results: list = [None] * len(prompt_token_ids)
        for i, samples in self.generate_stream(prompt_token_ids, params, prompt_keys):
            results[i] = samples
        return results

    def generate_stream(self, prompt_token_ids: Sequence[Sequence[int]],
                        params: SamplingParams | Sequence[SamplingParams],
                        prompt_keys: Sequence[int] | None = None
                        ) -> Iterator[tuple[int, list[SampleOutput]]]:
        """`generate`, yielding (prompt index, its samples) as soon as a prompt's n
        samples have all finished, so a caller can write results while the slots keep
        working on the rest (the generate stage writes each shard when its prompts are
        done). Every request is checked before any work; on several hosts a refusal
        on one stops them all."""
        prompts, per_prompt, keys, buckets = self._requests(prompt_token_ids, params,
                                                            prompt_keys)
        # One slot length, stop-id width and top-k width for the call, on every host.
        slot_len = self.slot_len or _round_up(
            max((b + p.max_new_tokens for b, p in zip(buckets, per_prompt)), default=1),
            attention.DECODE_BLOCK)
        stops = 1 << max(0, max((len(p.stop_token_ids) for p in per_prompt), default=1) - 1
                         ).bit_length()
        top_k_out = max((p.return_top_k for p in per_prompt), default=0)
        if self.process_count > 1:
            slot_len, stops, top_k_out = distributed.agree_max(slot_len, stops, top_k_out)

        work = [_Sample(i, j) for i in range(len(prompts)) for j in range(per_prompt[i].n)]
        if self.order == "longest_first":   # stable: equal caps stay in arrival order
            work.sort(key=lambda s: -per_prompt[s.request].max_new_tokens)
        host_slots = self._host_rows(self.num_slots)
        scheduler = SlotScheduler(range(len(host_slots)), self.scheduler, work)
        results: list[list[SampleOutput | None]] = [[None] * p.n for p in per_prompt]
        remaining = [p.n for p in per_prompt]
        completed: list[int] = []
        stats = collections.Counter()
        start, compiles = time.perf_counter(), engine_compiles()
        state = self._call(self._program("init", slot_len, stops))

        def finish(local_slot: int, stopped: bool):
            s = scheduler.release(local_slot)
            p = per_prompt[s.request]
            out = SampleOutput(s.token_ids, s.logprobs, "stop" if stopped else "length")
            if p.return_top_k:
                out.top_k_ids = [ids[:p.return_top_k] for ids in s.top_ids]
                out.top_k_logprobs = [lps[:p.return_top_k] for lps in s.top_logprobs]
            results[s.request][s.index] = apply_stop_strings(out, p.stop_strings, self.tokenizer)
            remaining[s.request] -= 1
            if not remaining[s.request]:
                completed.append(s.request)

        def collect(sample: _Sample, emitted, r: int):
            count = int(emitted.emitted[r].sum())
            sample.token_ids += emitted.tokens[r, :count].tolist()
            sample.logprobs += emitted.logprobs[r, :count].tolist()
            if top_k_out:
                sample.top_ids += emitted.top_ids[r, :count].tolist()
                sample.top_logprobs += emitted.top_logprobs[r, :count].tolist()
            return count

        while True:
            calls = self._insert_calls(scheduler.admit(), buckets)
            # Calls per length bucket this round and the cache window the decode
            # call needs: every host runs the same programs, so the hosts take
            # the most of each (padding the rest).
            fill = max((buckets[s.request] + max(len(s.token_ids), 1) - 1
                        for s in scheduler.running.values()), default=0)
            wanted = [scheduler.busy, fill] + [sum(length == b for length, _ in calls)
                                               for b in self.length_buckets]
            if self.process_count > 1:
                wanted = distributed.agree_max(*wanted)
            busy, window = bool(wanted[0]), self._window(wanted[1], slot_len)
            for length, num_calls in zip(self.length_buckets, wanted[2:]):
                mine = [rows for b, rows in calls if b == length]
                for k in range(num_calls):
                    rows = mine[k] if k < len(mine) else []
                    batch = self._insert_batch(rows, prompts, per_prompt, keys, length,
                                               host_slots, stops)
                    program = self._program("insert", slot_len, stops, length, top_k_out)
                    state, first = self._call(program, self.params, state, self._global(batch))
                    first = self._local(first)
                    for local_slot, s in rows:
                        collect(s, first, local_slot)
                        p = per_prompt[s.request]    # done at its first token
                        if p.max_new_tokens == 1 or s.token_ids[0] in p.stop_token_ids:
                            finish(local_slot, s.token_ids[0] in p.stop_token_ids)
                    stats["prefill_calls"] += 1
                    stats["prefilled_prompts"] += len({s.request for _, s in rows})
            if not busy:
                break

            refill = np.full((self.local_slots,), scheduler.wants_refill)
            program = self._program("decode", slot_len, stops, window, top_k_out)
            state, emitted, steps = self._call(program, self.params, state,
                                               self._global(refill), np.int32(self.min_free))
            emitted, active, stopped = self._local((emitted, state.active, state.stopped))
            steps = int(steps)
            stats["decode_calls"] += 1
            stats["decode_steps"] += steps
            for local_slot, s in list(scheduler.running.items()):
                stats["decode_tokens"] += collect(s, emitted, local_slot)
                if not active[local_slot]:
                    finish(local_slot, bool(stopped[local_slot]))
            for i in completed:
                yield i, results[i]
            completed.clear()
        for i in completed:           # finished at their first token in the last round
            yield i, results[i]
        elapsed = time.perf_counter() - start
        slot_steps = stats["decode_steps"] * self.local_slots
        self.stats = dict(stats, seconds=elapsed, num_slots=self.num_slots, slot_len=slot_len,
                          scheduler=self.scheduler, programs=len(self._programs),
                          compiles=engine_compiles() - compiles,
                          utilization=stats["decode_tokens"] / slot_steps if slot_steps else 0.0)

    def _requests(self, prompt_token_ids, params, prompt_keys):
        """(prompts, SamplingParams per prompt, keys, length buckets), every request
        checked before any work. On several hosts the hosts agree first, so a host
        refusing its requests does not leave the others waiting in a collective."""
        error = None
        try:
            prompts = [list(map(int, p)) for p in prompt_token_ids]
            per_prompt = ([params] * len(prompts) if isinstance(params, SamplingParams)
                          else list(params))
            if len(per_prompt) != len(prompts):
                raise ValueError(f"{len(per_prompt)} SamplingParams for {len(prompts)} "
                                 "prompts; give one for all or one per prompt")
            keys = (list(range(len(prompts))) if prompt_keys is None
                    else [int(k) for k in prompt_keys])
            if len(keys) != len(prompts):
                raise ValueError(f"{len(keys)} prompt_keys for {len(prompts)} prompts")
            buckets = self._check(prompts, per_prompt)
        except ValueError as e:
            error = e
        if self.process_count > 1:
            (failed,) = distributed.agree_max(int(error is not None))
            if failed and error is None:
                raise ValueError("another host refused its requests (its error names them); "
                                 "nothing was generated")
        if error is not None:
            raise error
        return prompts, per_prompt, keys, buckets

    def _window(self, fill: int, slot_len: int) -> int:
        """The cache slots a decode call reads: the largest fill (next write index) of
        a slot plus the call's steps, in whole blocks, their count rounded up to the
        next of 1, 2, 3, 4, 6, 8, 12, ... (powers of two and 1.5 times them: at most
        1.5x the slots needed, and 2 log2 programs per slot length), at most the
        slot length."""
        block = attention.DECODE_BLOCK
        blocks = max(1, -(-(fill + self.steps_per_call - 1) // block))  # last step reads < it
        power = 1 << (blocks - 1).bit_length()             # the power of two >= blocks
        blocks = power * 3 // 4 if power * 3 // 4 >= blocks else power
        return min(slot_len, block * blocks)

    def _check(self, prompts, per_prompt) -> list[int]:
        """Refuses bad requests before any work; -> each prompt's length bucket."""
        buckets = []
        for i, (p, sp) in enumerate(zip(prompts, per_prompt)):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            bad = [t for t in p if not 0 <= t < self.cfg.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.cfg.vocab_size}): "
                                 f"{bad[:5]}")
            if sp.return_top_k > self.cfg.vocab_size:
                raise ValueError(f"prompt {i}: return_top_k={sp.return_top_k} exceeds the "
                                 f"vocabulary ({self.cfg.vocab_size})")
            bad_stops = [t for t in sp.stop_token_ids if not 0 <= t < self.cfg.vocab_size]
            if bad_stops:
                raise ValueError(f"prompt {i}: stop_token_ids {bad_stops} are not in the "
                                 f"vocabulary [0, {self.cfg.vocab_size})")
            limit = self.cfg.max_position_embeddings - sp.max_new_tokens
            if len(p) > min(self.length_buckets[-1], limit):
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens={sp.max_new_tokens} "
                    f"at most {min(self.length_buckets[-1], limit)} fit (largest length bucket "
                    f"{self.length_buckets[-1]}, max_position_embeddings "
                    f"{self.cfg.max_position_embeddings})")
            length = bucket(len(p), self.length_buckets, "prompt length")
            if self.slot_len and length + sp.max_new_tokens > self.slot_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens (length bucket {length}); with "
                    f"max_new_tokens={sp.max_new_tokens} it needs {length + sp.max_new_tokens} "
                    f"cache slots, more than slot_len={self.slot_len}")
            buckets.append(length)
        return buckets

    def _insert_calls(self, admitted, buckets) -> list[tuple[int, list]]:
        """Admitted (slot, sample) pairs -> prefill_insert calls (length bucket, rows):
        per length bucket, the prompts in first-come order, `prefill_batch` per call,
        each prompt's admitted samples in the call that prefills it."""
        by_prompt: dict[int, list] = collections.defaultdict(list)
        for local_slot, s in admitted:
            by_prompt[s.request].append((local_slot, s))
        by_bucket: dict[int, list] = collections.defaultdict(list)
        for request in by_prompt:
            by_bucket[buckets[request]].append(request)
        calls = []
        for length in sorted(by_bucket):
            requests = by_bucket[length]
            for lo in range(0, len(requests), self.prefill_batch):
                calls.append((length, [pair for r in requests[lo:lo + self.prefill_batch]
                                       for pair in by_prompt[r]]))
        return calls

    def _insert_batch(self, rows, prompts, per_prompt, keys, length: int,
                      host_slots: np.ndarray, stops: int) -> engine.InsertBatch:
        """This host's part of one prefill_insert call: its prompts left-padded to
        `length` in `prefill_batch` rows, its samples in one entry per local slot
        (the real ones first, then padding)."""
        sample_rows = self.local_slots   # integer indices only: one shape for any arrival
        order = list(dict.fromkeys(s.request for _, s in rows))   # prompts, first-come order
        tokens = np.full((self.prefill_batch, length), self.pad_id, np.int32)
        segment_ids = np.zeros((self.prefill_batch, length), np.int32)
        for r, i in enumerate(order):
            tokens[r, length - len(prompts[i]):] = prompts[i]
            segment_ids[r, length - len(prompts[i]):] = 1
        global_prompt_rows = self._host_rows(self.prefill_batch * self.process_count)
        where = {i: r for r, i in enumerate(order)}
        source = np.zeros(sample_rows, np.int32)
        slot = np.full(sample_rows, self.num_slots, np.int32)       # padding: dropped
        seed = np.zeros(sample_rows, np.uint32)
        prompt_key = np.zeros(sample_rows, np.uint32)
        sample_index = np.zeros(sample_rows, np.uint32)
        row_params = [SamplingParams()] * sample_rows
        for r, (local_slot, s) in enumerate(rows):
            source[r] = global_prompt_rows[where[s.request]]
            slot[r] = host_slots[local_slot]
            p = per_prompt[s.request]
            seed[r], prompt_key[r], sample_index[r] = p.seed, keys[s.request] & 0x7FFFFFFF, s.index
            row_params[r] = p
        return engine.InsertBatch(tokens=tokens, segment_ids=segment_ids, source=source,
                                  slot=slot, seed=seed, prompt_key=prompt_key,
                                  sample_index=sample_index,
                                  settings=engine.SlotSettings.from_params(row_params, stops))
